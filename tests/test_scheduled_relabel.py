"""The scheduled-relabeling recipe of docs/scheduled.md, run as a scheduler would run it.

One unchanged command line (`segops infer MODEL ARCHIVE OUT --labels LABELS`) runs after every
delivery into a growing archive: each run processes only the new images, a run whose pipeline
raised and a run that was killed before its commit are simply started again, and the results
table (Delta Lake) holds exactly one row per (image, model), read the way the docs read it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from trainutil import synth_val_and_tiny_unet

from segops.cli import cli
from segops.inference.table import open_table
from segops.models import export_dir

pytestmark = pytest.mark.slow

H, W = 64, 128


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny exported U-Net and a pool of 9 labelled images to deliver from."""
    model, pool = synth_val_and_tiny_unet(tmp_path_factory.mktemp("source"), 9, H, W, data_seed=5, model_seed=2)
    images = sorted((pool / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    assert len(images) == 9
    return model, images


class Archive:
    """archive/<day>/cam_<k>.png with ground truth at labels/<day>/cam_<k>.png, as deliveries land."""

    def __init__(self, root: Path, pool: list[Path]) -> None:
        self.images, self.labels, self.out = root / "archive", root / "labels", root / "relabelled"
        self.pool = list(pool)
        self.delivered: list[Path] = []

    def deliver(self, day: str, n: int) -> list[Path]:
        new = []
        for _ in range(n):
            src = self.pool.pop(0)
            k = len(self.delivered)
            image = self.images / day / f"cam_{k:03d}.png"
            label = self.labels / day / f"cam_{k:03d}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, image)
            gt = str(src).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            shutil.copy(gt, label)
            self.delivered.append(image)
            new.append(image)
        return new

    def masks_of(self, image: Path) -> list[Path]:
        rel = image.relative_to(self.images).with_suffix("")
        return [self.out / "masks" / f"{rel}_{kind}.png" for kind in ("trainIds", "labelIds", "color")]


def relabel(model: Path, archive: Archive, run_id: str) -> tuple[int, dict]:
    """The recipe's command line; (exit code, this run's record in OUT/manifest.json)."""
    args = ["infer", str(model), str(archive.images), str(archive.out), "--labels", str(archive.labels),
            "--run-id", run_id]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    manifest = archive.out / "manifest.json"
    runs = json.loads(manifest.read_text())["runs"] if manifest.exists() else []
    record = next((r for r in runs if r["run_id"] == run_id), {})
    return result.exit_code, record


def union(out: Path):
    """The table's rows (latest version), queried with DuckDB the way docs/scheduled.md does."""
    rows = open_table(str(out)).to_pyarrow_dataset()  # noqa: F841 - DuckDB scans the Python variable
    return duckdb.sql("SELECT path, rel_path, model_id, run_id AS run, has_labels FROM rows").to_arrow_table()


def test_a_growing_archive_is_relabelled_incrementally_and_failed_runs_are_just_restarted(source, tmp_path):
    model, pool = source
    archive = Archive(tmp_path, pool)
    model_id = export_dir.load_info(str(model)).model_id

    # run 1: N = 3 images
    day1 = archive.deliver("2026-11-01", 3)
    code, run = relabel(model, archive, "r1")
    assert code == 0 and (run["processed"], run["skipped"]) == (3, 0)
    day1_masks = {p: p.read_bytes() for img in day1 for p in archive.masks_of(img)}
    day1_mtimes = {p: p.stat().st_mtime_ns for p in day1_masks}

    # run 2: M = 2 new images; only they are processed, day 1 is left alone
    day2 = archive.deliver("2026-11-02", 2)
    code, run = relabel(model, archive, "r2")
    assert code == 0 and (run["processed"], run["skipped"]) == (2, 3)
    assert {p: p.stat().st_mtime_ns for p in day1_masks} == day1_mtimes
    t = union(archive.out)
    assert sorted(zip(t.column("run").to_pylist(), t.column("rel_path").to_pylist(), strict=True)) == sorted(
        [("r1", str(p.relative_to(archive.images))) for p in day1]
        + [("r2", str(p.relative_to(archive.images))) for p in day2]
    )

    # a run whose pipeline raised: the model store was half-synced (same model.json, truncated weights)
    day3 = archive.deliver("2026-11-03", 2)
    broken = tmp_path / "model-half-synced"
    shutil.copytree(model, broken)
    for f in (broken / "saved_model" / "variables").glob("variables.data-*"):
        f.write_bytes(f.read_bytes()[:16])
    version = open_table(str(archive.out)).version()
    code, run = relabel(broken, archive, "r3-failed")
    assert code != 0 and run == {}  # the run died before recording itself
    assert open_table(str(archive.out)).version() == version  # the table is as it was: no rows committed
    assert not any(p.exists() for img in day3 for p in archive.masks_of(img))
    code, run = relabel(model, archive, "r3")  # started again, unchanged
    assert code == 0 and (run["processed"], run["skipped"]) == (2, 5)
    assert all(p.exists() for img in day3 for p in archive.masks_of(img))

    # a run killed before its commit: its masks partly written, its staged rows left behind, the
    # table without its rows (here: run r4, then the table restored to the version before it)
    day4 = archive.deliver("2026-11-04", 2)
    version = open_table(str(archive.out)).version()
    code, run = relabel(model, archive, "r4")
    assert code == 0 and run["processed"] == 2
    open_table(str(archive.out)).restore(version)
    for p in archive.masks_of(day4[1]):
        p.unlink()
    stale = archive.out / ".staging" / "r4-killed" / "part-0123.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"PAR1 half a file")
    day_ago = time.time() - 2 * 86400
    os.utime(stale, (day_ago, day_ago))
    code, run = relabel(model, archive, "r5")
    assert code == 0 and (run["processed"], run["skipped"]) == (2, 7)
    assert not stale.parent.exists()  # a killed run's staging older than a day is cleared
    assert all(p.exists() for img in day4 for p in archive.masks_of(img))

    # nothing new: nothing is committed, the table stays as it was
    before = union(archive.out).num_rows
    version = open_table(str(archive.out)).version()
    code, run = relabel(model, archive, "r6")
    assert code == 0 and (run["processed"], run["skipped"]) == (0, 9)
    assert union(archive.out).num_rows == before and open_table(str(archive.out)).version() == version

    # the union of all runs: N + M + ... rows, one per image, all for this model
    t = union(archive.out)
    paths = t.column("path").to_pylist()
    assert len(paths) == len(archive.delivered) == 9
    assert sorted(paths) == sorted(str(p) for p in archive.delivered)  # no duplicates, nothing missing
    assert set(t.column("model_id").to_pylist()) == {model_id}
    assert all(t.column("has_labels").to_pylist())
    by_run = {}
    for r, rel in zip(t.column("run").to_pylist(), t.column("rel_path").to_pylist(), strict=True):
        by_run.setdefault(r, set()).add(rel.split("/")[0])
    assert by_run == {"r1": {"2026-11-01"}, "r2": {"2026-11-02"}, "r3": {"2026-11-03"}, "r5": {"2026-11-04"}}
    assert {p: p.read_bytes() for p in day1_masks} == day1_masks
    summary = json.loads((archive.out / "summary.json").read_text())
    assert summary["images"] == summary["labelled_images"] == 9 and summary["model_id"] == model_id
