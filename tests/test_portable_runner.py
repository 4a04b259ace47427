"""`segops infer` on Beam's PortableRunner (a local job service and an external SDK worker pool,
both started here on loopback ports) writes the same outputs as on the DirectRunner.

This is the path a Flink/Spark cluster takes (job service + SDK harness processes), without the
cluster: the pipeline is serialised to a portable proto, submitted over gRPC, and executed by
separate worker processes that import segops on their own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from trainutil import synth_val_and_tiny_unet

from segops.cli import cli
from segops.inference.table import read_metrics

pytestmark = pytest.mark.slow

H, W = 64, 128
VOLATILE = ("inference_ms", "crf_ms", "run_id")  # timings and run ids differ between any two runs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"service exited with {proc.returncode} before listening on {port}:\n{log.read_text()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on port {port} after {timeout:.0f} s:\n{log.read_text()}")


@pytest.fixture
def portable_services(tmp_path, request):
    """(job endpoint, worker pool endpoint); both services are stopped when the test ends."""
    env = dict(os.environ)
    # The worker pool starts each SDK worker as plain `python` from PATH: make that this venv's.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        # Output to a file, never an unread pipe (a full pipe blocks the service). Own session, so
        # the SDK workers the pool spawns can be stopped with it.
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        started.append((proc, log))
        return proc

    def stop() -> None:
        for proc, _ in reversed(started):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)  # this service's own process group: it and its SDK workers
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()

    request.addfinalizer(stop)
    job_port, pool_port = free_port(), free_port()
    job = start("job_service", ["apache_beam.runners.portability.local_job_service_main", f"--port={job_port}"])
    pool = start("worker_pool", ["apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"])
    wait_for_port(job_port, job, tmp_path / "job_service.log")
    wait_for_port(pool_port, pool, tmp_path / "worker_pool.log")
    return f"localhost:{job_port}", f"localhost:{pool_port}", [log for _, log in started]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    """A tiny U-Net export (random weights: its masks are varied, not trivial) and 3 val images."""
    return synth_val_and_tiny_unet(tmp_path_factory.mktemp("portable"), 3, H, W, data_seed=3, model_seed=1)


def run_cli(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def outputs(out: Path) -> tuple[dict[str, bytes], list[dict], dict]:
    masks = {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "masks").rglob("*")) if p.is_file()}
    table = read_metrics(str(out))
    rows = sorted(
        ({k: v for k, v in r.items() if k not in (*VOLATILE, "run")} for r in table.to_pylist()), key=lambda r: r["path"]
    )
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("run_id")
    return masks, rows, summary


def test_infer_on_the_portable_runner_equals_the_direct_runner(model_and_data, portable_services, tmp_path):
    model, data = model_and_data
    job, pool, logs = portable_services
    # One image per batch in both runs: each image's model call is then the same computation
    # whatever order the runners deliver elements in.
    common = ["infer", str(model), str(data), "--split", "val", "--batch-size", "1"]
    run_cli([*common, str(tmp_path / "direct")])
    try:
        text = run_cli([*common, str(tmp_path / "portable"), "--", "--runner=PortableRunner", f"--job_endpoint={job}",
                        "--environment_type=EXTERNAL", f"--environment_config={pool}"])  # fmt: skip
    except AssertionError:
        for log in logs:
            print(f"--- {log.name}\n{log.read_text()[-5000:]}")
        raise
    assert "processed 3" in text

    direct_masks, direct_rows, direct_summary = outputs(tmp_path / "direct")
    portable_masks, portable_rows, portable_summary = outputs(tmp_path / "portable")
    assert len(direct_masks) == 9 and sorted(portable_masks) == sorted(direct_masks)  # 3 images x 3 masks
    for name, data_ in direct_masks.items():
        assert portable_masks[name] == data_, name
    assert len(direct_rows) == 3
    # Float sums may differ in the last bit between processes (the worker's thread pool splits
    # the model's reductions differently): confidences agree to float32 precision, all else exactly.
    for d, p in zip(direct_rows, portable_rows, strict=True):
        assert p.pop("mean_confidence") == pytest.approx(d.pop("mean_confidence"), rel=1e-6)
        assert p == d
    assert portable_summary.pop("mean_confidence") == pytest.approx(direct_summary.pop("mean_confidence"), rel=1e-6)
    assert portable_summary == direct_summary
    assert direct_summary["after_crf"]["images"] == 3
    # the job really went through the job service and ran in an SDK worker the pool started
    assert "with state DONE" in logs[0].read_text()
    assert "Starting worker with command" in logs[1].read_text()
