"""The results table under the conditions a nightly job meets: two runs into one OUT at once, a
run killed with SIGKILL and started again, readers (pandas, DuckDB) and time travel."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from conftest import subprocess_env
from trainutil import synth_val_and_tiny_unet

from segops.inference.options import InferOptions
from segops.inference.table import open_table, read_metrics
from workflows.infer import run_infer

pytestmark = pytest.mark.slow

H, W = 96, 192


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny exported U-Net and 8 labelled images in the Cityscapes layout."""
    return synth_val_and_tiny_unet(tmp_path_factory.mktemp("archive"), 8, H, W, data_seed=3, model_seed=4)


def infer_cmd(model: Path, data: Path, out: Path, run_id: str) -> list[str]:
    return [sys.executable, "-m", "segops.cli", "infer", str(model), str(data), str(out), "--split", "val",
            "--run-id", run_id]  # fmt: skip


def table_keys(out: Path) -> list[tuple[str, str]]:
    t = read_metrics(str(out), ["path", "model_id"])
    return list(zip(t.column("path").to_pylist(), t.column("model_id").to_pylist(), strict=True))


def masks(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "masks").rglob("*.png"))}


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory):
    """An uninterrupted run: the masks and rows every other run must end with."""
    model, data = archive
    out = tmp_path_factory.mktemp("reference") / "out"
    report = run_infer(InferOptions(str(model), str(data), str(out), split="val", run_id="ref"))
    assert report.processed == 8
    return out


def test_two_runs_into_one_out_at_once_end_with_one_row_per_image(archive, reference, tmp_path):
    model, data = archive
    out = tmp_path / "out"
    procs = [subprocess.Popen(infer_cmd(model, data, out, f"cron-{k}"), env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for k in (1, 2)]  # fmt: skip
    logs = [p.communicate(timeout=600)[0] for p in procs]
    # both runs commit (the later MERGE is retried on the earlier one's version), or one refuses
    # cleanly; either way the table holds every image exactly once
    assert all(p.returncode == 0 for p in procs), logs
    keys = table_keys(out)
    assert len(keys) == len(set(keys)) == 8
    assert masks(out) == masks(reference)
    history = [h for h in open_table(str(out)).history() if h.get("operation") == "MERGE"]
    assert sorted(h["segops.run_id"] for h in history) == ["cron-1", "cron-2"]


def test_a_run_killed_with_sigkill_then_rerun_processes_every_image_exactly_once(archive, reference, tmp_path):
    model, data = archive
    out = tmp_path / "out"
    proc = subprocess.Popen(infer_cmd(model, data, out, "killed"), env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "masks").rglob("*_color.png")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: some masks written, nothing committed
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    report = run_infer(InferOptions(str(model), str(data), str(out), split="val", run_id="rerun"))
    assert report.processed + report.skipped == 8
    keys = table_keys(out)
    assert len(keys) == len(set(keys)) == 8
    assert masks(out) == masks(reference)
    assert not (out / ".staging" / "rerun").exists()


def test_readers_see_one_row_per_image_and_every_run_is_a_version(archive, reference):
    ref = open_table(str(reference))
    frame = ref.to_pandas(columns=["path", "model_id", "run_id", "mean_iou_after"])
    assert len(frame) == 8 and frame["path"].is_unique and set(frame["run_id"]) == {"ref"}
    rows = ref.to_pyarrow_dataset()  # noqa: F841 - scanned by DuckDB below
    ((count, mean),) = duckdb.sql("SELECT count(*), avg(mean_iou_after) FROM rows").fetchall()
    assert count == 8 and mean == pytest.approx(frame["mean_iou_after"].mean())
    # time travel: the version the run committed, and the empty table before it
    assert open_table(str(reference), run_id="ref").version() == ref.version()
    assert open_table(str(reference), version=ref.version() - 1).to_pyarrow_table().num_rows == 0


def test_an_out_in_the_old_parquet_layout_is_refused_with_advice(archive, tmp_path):
    model, data = archive
    out = tmp_path / "out"
    (out / "metrics.parquet" / "run=old").mkdir(parents=True)
    (out / "metrics.parquet" / "run=old" / "part-0.parquet").write_bytes(b"PAR1")
    with pytest.raises(RuntimeError, match="old layout.*new OUT"):
        run_infer(InferOptions(str(model), str(data), str(out), split="val"))
