"""`segops prepare` and `segops infer` on workers that share no disk with the launcher.

The "cluster" is another host made here: a network namespace of its own, joined to this one by a
veth pair, and a private mount namespace where pytest's base temporary directory is a fresh
tmpfs (the launcher's inputs, model, caches and logs all live there, so none of them is visible
to the workers; the repository and its venv stay visible, as a worker image holds segops). Beam's job
service and its SDK worker pool run inside it, like a Flink/Spark job server and its task
managers; the launcher submits the pipeline over the veth link (a relay on its loopback carries
the job API, whose artifact endpoint Beam advertises as ``localhost``). The only storage both
sides reach is an S3 API server (moto) listening on the launcher side of the link, and every
input and output of both stages is in its bucket. The outputs must equal a local DirectRunner
run's: masks byte for byte, the same rows, the same statistics and shards.

Needs root and a kernel that allows network and mount namespaces (as CI's machines do); skipped
with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, environment
from tcp_relay import Relay
from trainutil import synth_val_and_tiny_unet

from segops.cli import cli

pytestmark = pytest.mark.slow
H, W = 32, 64
BUCKET = "segops-cluster"
RUN_COLUMNS = {"run_id", "path", "label_path", "input_mtime", "inference_ms", "crf_ms"}


def _sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True)


def _wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, netns: str | None = None) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        probe = [sys.executable, "-c", f"import socket; socket.create_connection(('{host}', {port}), 0.5)"]
        if (_sh("ip", "netns", "exec", netns, *probe) if netns else _sh(*probe)).returncode == 0:
            return
        time.sleep(0.3)
    pytest.fail(f"nothing listens on {host}:{port}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(S3 server on the launcher side, Beam options that submit to the cluster, the cluster's log)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        pytest.skip("needs root with iproute2 and util-linux (network and mount namespaces)")
    name = f"segops-{uuid.uuid4().hex[:6]}"
    host_if, ns_if = f"vh{name[-6:]}", f"vn{name[-6:]}"
    subnet = 100 + int(name[-2:], 16) % 100
    host_ip, ns_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    made = _sh("ip", "netns", "add", name)
    if made.returncode != 0:
        pytest.skip(f"the kernel refused a network namespace: {made.stderr.strip()}")
    procs: list[subprocess.Popen] = []
    relay: Relay | None = None
    logs = tmp_path_factory.mktemp("cluster")
    try:
        for cmd in (["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
                    ["ip", "link", "set", ns_if, "netns", name],
                    ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if], ["ip", "link", "set", host_if, "up"],
                    ["ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if],
                    ["ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up"],
                    ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]):  # fmt: skip
            step = _sh(*cmd)
            if step.returncode != 0:
                pytest.skip(f"could not build the cluster's network ({' '.join(cmd)}): {step.stderr.strip()}")
        # the storage: an S3 server bound to the launcher's end of the link only
        s3_port = 18000 + int(name[-4:], 16) % 20000
        with open(logs / "moto.log", "wb") as log:
            moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host_ip, "-p", str(s3_port)],
                                    stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(moto)
        _wait_port(host_ip, s3_port, moto, logs / "moto.log")
        server = S3Server(f"http://{host_ip}:{s3_port}")
        server.create_bucket(BUCKET)
        # the cluster: job service + worker pool in the namespace, /tmp a tmpfs of its own
        job_port, pool_port = 18000 + (s3_port + 1) % 20000, 18000 + (s3_port + 2) % 20000
        python = sys.executable
        # Beam's job service binds its port on the namespace's loopback only: a relay in the
        # namespace exposes it on the link (the launcher's relay then reaches it as localhost)
        relay_script = Path(__file__).with_name("tcp_relay.py")
        # everything this test session wrote (archive, logs, the launcher's model cache) is
        # under pytest's base temp directory: the cluster gets an empty tmpfs there instead
        hidden = tmp_path_factory.getbasetemp()
        script = (
            f"mount -t tmpfs cluster-tmp {hidden} && "
            f"{python} {relay_script} {ns_ip} {job_port} 127.0.0.1 {job_port} & "
            f"{python} -m apache_beam.runners.worker.worker_pool_main --service_port={pool_port} & "
            f"exec {python} -m apache_beam.runners.portability.local_job_service_main --port={job_port}"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SEGOPS_"))}
        # The workers' own credentials, as a cluster's machines have them (instance roles, their
        # environment): Beam's EXTERNAL worker pool starts SDK harnesses that never receive the
        # launcher's pipeline options on FileSystems (docs/cluster.md)
        env |= server.env | {"SEGOPS_CACHE_DIR": str(hidden / "cluster-cache")}  # the model copy, private
        env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")  # the pool starts `python`
        with open(logs / "cluster.log", "wb") as log:
            job = subprocess.Popen(["ip", "netns", "exec", name, "unshare", "--mount", "--propagation", "private",
                                    "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # fmt: skip
        procs.append(job)
        _wait_port("127.0.0.1", job_port, job, logs / "cluster.log", netns=name)
        _wait_port("127.0.0.1", pool_port, job, logs / "cluster.log", netns=name)
        relay = Relay("127.0.0.1", job_port, ns_ip, job_port)
        # the cluster really shares no disk with the launcher: its /tmp holds none of our files
        seen = _sh("nsenter", "--target", str(job.pid), "--mount", "test", "-e", str(logs / "moto.log"))
        assert seen.returncode == 1, f"the cluster sees the launcher's {logs}: {seen}"
        beam_args = [
            "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{pool_port}", f"--s3_endpoint_url={server.endpoint}",
            f"--s3_access_key_id={ACCESS_KEY}", f"--s3_secret_access_key={SECRET_KEY}", f"--s3_region_name={REGION}",
        ]  # fmt: skip
        with environment({"SEGOPS_CACHE_DIR": str(logs / "launcher-cache")}):
            yield server, beam_args, logs / "cluster.log"
    finally:
        if relay is not None:
            relay.close()
        for proc in reversed(procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 9) if proc is not procs[0] else proc.kill()
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(timeout=30)
        for pid in _sh("ip", "netns", "pids", name).stdout.split():
            _sh("kill", "-9", pid)
        _sh("ip", "link", "del", host_if)
        _sh("ip", "netns", "del", name)


@pytest.fixture(scope="module")
def archive(cluster, tmp_path_factory):
    server, _, _ = cluster
    root = tmp_path_factory.mktemp("archive")
    model, data = synth_val_and_tiny_unet(root, 3, H, W, data_seed=8, model_seed=9)
    server.upload_tree(model, f"s3://{BUCKET}/model")
    server.upload_tree(data, f"s3://{BUCKET}/data")
    return model, data


def run(*args: str, cluster_log: Path | None = None):
    result = CliRunner().invoke(cli, list(args))
    if result.exit_code != 0 and cluster_log is not None:
        print(cluster_log.read_text()[-6000:])
    return result


def test_prepare_on_workers_without_the_launchers_disk_equals_a_local_run(cluster, archive, tmp_path):
    server, beam_args, log = cluster
    _, data = archive
    assert run("prepare", str(data), str(tmp_path / "local")).exit_code == 0
    result = run("prepare", f"s3://{BUCKET}/data", f"s3://{BUCKET}/prep", "--", *beam_args, cluster_log=log)
    assert result.exit_code == 0, result.output
    remote = server.objects(f"s3://{BUCKET}/prep")
    local = {str(p.relative_to(tmp_path / "local")): p.read_bytes() for p in (tmp_path / "local").rglob("*") if p.is_file()}
    assert set(remote) == set(local)
    for name in ("stats.json", "class_weights.json"):
        assert json.loads(remote[name]) == json.loads(local[name])
    assert {k: v for k, v in remote.items() if k.endswith(".tfrecord")} == \
        {k: v for k, v in local.items() if k.endswith(".tfrecord")}  # fmt: skip


def test_infer_on_workers_without_the_launchers_disk_equals_a_local_run(cluster, archive, tmp_path):
    from segops.inference.table import read_metrics

    server, beam_args, log = cluster
    model, data = archive
    local = tmp_path / "local"
    assert run("infer", str(model), str(data), str(local), "--split", "val", "--batch-size", "1").exit_code == 0
    out = f"s3://{BUCKET}/out"
    args = ["infer", f"s3://{BUCKET}/model", f"s3://{BUCKET}/data", out, "--split", "val", "--batch-size", "1",
            "--", *beam_args]  # fmt: skip
    result = run(*args, cluster_log=log)
    assert result.exit_code == 0, result.output
    assert "processed 3" in result.output
    remote = server.objects(out)
    local_masks = {str(p.relative_to(local)): p.read_bytes() for p in (local / "masks").rglob("*.png")}
    assert {k: v for k, v in remote.items() if k.startswith("masks/")} == local_masks
    with environment({"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                      "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}):  # fmt: skip
        remote_rows = read_metrics(out).to_pylist()

    def comparable(rows: list[dict]) -> list[dict]:
        out_rows = []
        for r in sorted(rows, key=lambda r: r["rel_path"]):
            kept = {k: v for k, v in r.items() if k not in RUN_COLUMNS}
            kept["mean_confidence"] = round(kept["mean_confidence"], 5)  # float sums differ between processes
            out_rows.append(kept)
        return out_rows

    assert comparable(remote_rows) == comparable(read_metrics(str(local)).to_pylist())
    again = run(*args, cluster_log=log)
    assert again.exit_code == 0 and "processed 0, skipped (already done) 3" in again.output, again.output
