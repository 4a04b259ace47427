"""Every stage on object storage, against a real S3 API server on loopback (moto's server mode,
tests/s3server.py): `segops prepare` and `segops infer` with INPUT, OUT and the model in a bucket,
configured only by Beam's S3 options after ``--`` (or the standard AWS variables), give what a
local run gives; a rerun does nothing new; two overlapping runs leave one row per image; train
reads PREP from the bucket; what a user can fix (no bucket, no endpoint) is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import subprocess_env
from s3server import environment, running_s3_server
from trainutil import synth_val_and_tiny_unet

from segops.cli import cli
from segops.core.layout import ATOMIC_TMP_INFIX

pytestmark = pytest.mark.slow
H, W = 32, 64
BUCKET = "segops-test"
# run-specific values: every other column of a row must equal the local run's
RUN_COLUMNS = {"run_id", "path", "input_mtime", "inference_ms", "crf_ms", "processed_at", "decode_ms", "total_ms"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    logs = tmp_path_factory.mktemp("moto")
    with running_s3_server(logs) as server:
        server.create_bucket(BUCKET)
        # the standard variables carry only the credentials: the endpoint reaches segops through
        # Beam's options after `--` (the CLI tests) or AWS_ENDPOINT_URL where a test sets it
        with environment({k: v for k, v in server.env.items() if k != "AWS_ENDPOINT_URL"} |
                         {"SEGOPS_CACHE_DIR": str(logs / "cache")}):  # fmt: skip
            yield server


@pytest.fixture(scope="module")
def archive(s3, tmp_path_factory):
    """A tiny exported U-Net and 3 labelled val images, locally and in the bucket."""
    root = tmp_path_factory.mktemp("archive")
    model, data = synth_val_and_tiny_unet(root, 3, H, W, data_seed=5, model_seed=6)
    s3.upload_tree(model, f"s3://{BUCKET}/model")
    s3.upload_tree(data, f"s3://{BUCKET}/data")
    return model, data


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def rows_without_run_columns(table) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k not in RUN_COLUMNS | {"label_path"}}
            | {"image": r["path"].split("/val/", 1)[1], "label": r["label_path"].split("/val/", 1)[1]}
            for r in table.to_pylist()]  # fmt: skip
    return sorted(rows, key=lambda r: r["image"])


def summary_without_run_fields(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("run_id", "table_version")}


def test_prepare_on_s3_writes_what_a_local_prepare_writes(s3, archive, tmp_path):
    _, data = archive
    local = tmp_path / "prep"
    assert run("prepare", str(data), str(local)).exit_code == 0
    result = run("prepare", f"s3://{BUCKET}/data", f"s3://{BUCKET}/prep", "--", *s3.beam_args)
    assert result.exit_code == 0, result.output
    remote = s3.objects(f"s3://{BUCKET}/prep")
    written = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert set(remote) == written  # no temporaries or probes left behind
    for name in ("stats.json", "class_weights.json"):
        assert json.loads(remote[name]) == json.loads((local / name).read_bytes())
    for name in written:
        if name.endswith(".tfrecord"):
            assert remote[name] == (local / name).read_bytes(), name
    assert remote["dead_letter.jsonl"] == b""  # an empty object: Beam's S3 writer alone cannot write one


def test_train_reads_prepared_records_from_the_bucket(s3, tmp_path):
    """PREP on s3:// (copied to the local cache: TensorFlow 2.21 has no S3 filesystem); a train OUT
    on object storage is refused in one line before any work."""
    from trainutil import write_prepared

    write_prepared(str(tmp_path / "prep"), {"train": 2, "val": 1}, height=H, width=W)
    s3.upload_tree(tmp_path / "prep", f"s3://{BUCKET}/prep-train")
    flags = ["--model", "unet", "--depth", "2", "--base-filters", "4", "--epochs", "1", "--batch-size", "2",
             "--crop", f"{H}x{W}", "--no-progress", "--no-export", "--class-weights", "none"]  # fmt: skip
    with environment({"AWS_ENDPOINT_URL": s3.endpoint}):
        refused = run("train", f"s3://{BUCKET}/prep-train", f"s3://{BUCKET}/run", *flags)
        result = run("train", f"s3://{BUCKET}/prep-train", str(tmp_path / "run"), *flags)
    assert refused.exit_code == 2 and "is on object storage" in refused.output
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoints" / "epoch-0001.keras").exists()


INFER_OUT = f"s3://{BUCKET}/out"


def infer_args(s3) -> list[str]:
    return ["infer", f"s3://{BUCKET}/model", f"s3://{BUCKET}/data", INFER_OUT, "--split", "val", "--", *s3.beam_args]


@pytest.fixture(scope="module")
def s3_infer(s3, archive):
    """The first run into INFER_OUT, everything in the bucket, configured by Beam's options only."""
    result = run(*infer_args(s3))
    assert result.exit_code == 0, result.output
    return result.output


def test_infer_on_s3_equals_a_local_run(s3, archive, s3_infer, tmp_path):
    from segops.inference.table import read_metrics

    model, data = archive
    local = tmp_path / "out"
    assert run("infer", str(model), str(data), str(local), "--split", "val").exit_code == 0
    assert "processed 3, skipped (already done) 0, dead-lettered 0" in s3_infer
    remote = s3.objects(INFER_OUT)
    local_masks = {str(p.relative_to(local)): p.read_bytes() for p in (local / "masks").rglob("*.png")}
    assert {k: v for k, v in remote.items() if k.startswith("masks/")} == local_masks  # byte for byte
    assert summary_without_run_fields(json.loads(remote["summary.json"])) == \
        summary_without_run_fields(json.loads((local / "summary.json").read_bytes()))  # fmt: skip
    with environment({"AWS_ENDPOINT_URL": s3.endpoint}):  # read back as a user would, variables only
        remote_rows = read_metrics(INFER_OUT)
    assert rows_without_run_columns(remote_rows) == rows_without_run_columns(read_metrics(str(local)))


def test_a_rerun_on_s3_does_nothing_new_and_leaves_nothing_behind(s3, s3_infer):
    again = run(*infer_args(s3))
    assert again.exit_code == 0, again.output
    assert "processed 0, skipped (already done) 3, dead-lettered 0" in again.output
    leftovers = [k for k in s3.objects(INFER_OUT) if ".staging/" in k or "beam-temp" in k or ".tmp-" in k or "probe" in k]
    assert leftovers == []


def test_review_and_report_read_an_s3_out(s3, s3_infer, tmp_path):
    """With the standard variables only (these commands take no Beam options)."""
    with environment({"AWS_ENDPOINT_URL": s3.endpoint}):
        selected = run("review", "select", INFER_OUT, "--random", "2")
        exported = run("review", "export", INFER_OUT)
        report = run("report", "--infer", INFER_OUT, "--model", f"s3://{BUCKET}/model", str(tmp_path / "run"))
    assert selected.exit_code == 0 and "2 image(s) selected" in selected.output, selected.output
    assert exported.exit_code == 0, exported.output
    review = s3.objects(f"{INFER_OUT}/review")
    tasks = json.loads(review["label_studio_tasks.json"])
    assert len(tasks) == 2 and len(json.loads(review["coco_rle.json"])["images"]) == 2
    assert report.exit_code == 0, report.output
    assert "gallery_worst.png" in report.output and (tmp_path / "run" / "report" / "report.html").stat().st_size > 0


def test_two_overlapping_runs_into_one_s3_out_leave_one_row_per_image(s3, archive, tmp_path):
    from segops.inference.table import open_table, read_metrics

    out = f"s3://{BUCKET}/overlap"
    cmd = [sys.executable, "-m", "segops.cli", "infer", f"s3://{BUCKET}/model", f"s3://{BUCKET}/data", out,
           "--split", "val", "--no-crf"]  # fmt: skip
    env = subprocess_env() | s3.env
    procs = []
    for k in (1, 2):
        procs.append(subprocess.Popen([*cmd, "--run-id", f"cron-{k}", "--", *s3.beam_args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
        time.sleep(0.5)
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    with environment({"AWS_ENDPOINT_URL": s3.endpoint}):
        table = read_metrics(out, ["path", "model_id"])
        keys = list(zip(table.column("path").to_pylist(), table.column("model_id").to_pylist(), strict=True))
        merges = [h for h in open_table(out).history() if h.get("operation") == "MERGE"]
    assert len(keys) == len(set(keys)) == 3
    assert {h["segops.run_id"] for h in merges} <= {"cron-1", "cron-2"} and merges


@pytest.mark.parametrize(
    ("where", "words"),
    [("s3://no-such-bucket/out", "the bucket does not exist"), ("endpoint", "the endpoint cannot be reached")],
)
def test_storage_a_user_can_fix_is_one_line_with_exit_status_2(s3, archive, where, words):
    if where == "endpoint":
        beam_args, out = ["--s3_endpoint_url=http://127.0.0.1:1", f"--s3_region_name={'us-east-1'}"], f"s3://{BUCKET}/x"
    else:
        beam_args, out = s3.beam_args, where
    start = time.perf_counter()
    result = run("prepare", f"s3://{BUCKET}/data", out, "--", *beam_args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "AWS_ENDPOINT_URL" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert time.perf_counter() - start < 60  # not Beam's minutes of retries
    assert not [k for k in s3.objects(f"s3://{BUCKET}/x")]


def test_a_model_that_is_not_in_the_bucket_is_one_line(s3, archive):
    result = run("infer", f"s3://{BUCKET}/no-model", f"s3://{BUCKET}/data", f"s3://{BUCKET}/out-none", "--split",
                 "val", "--", *s3.beam_args)  # fmt: skip
    assert result.exit_code == 1 and "no model there" in result.output
    assert s3.objects(f"s3://{BUCKET}/out-none") == {}


def test_a_run_killed_with_sigkill_on_s3_then_rerun_holds_every_image_once(s3, s3_infer, tmp_path):
    import signal

    from segops.inference.table import read_metrics

    out = f"s3://{BUCKET}/killed"
    cmd = [sys.executable, "-m", "segops.cli", *infer_args(s3)]
    cmd[cmd.index(INFER_OUT)] = out
    proc = subprocess.Popen(cmd, env=subprocess_env() | s3.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(k.endswith("_color.png") for k in s3.keys(out)):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # mid-run: masks written, nothing committed
    proc.wait()
    rerun = run(*[out if a == INFER_OUT else a for a in infer_args(s3)])
    assert rerun.exit_code == 0, rerun.output
    with environment({"AWS_ENDPOINT_URL": s3.endpoint}):
        paths = read_metrics(out, ["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 3
    masks = {k: v for k, v in s3.objects(out).items() if k.startswith("masks/")}
    # A kill that lands inside a mask's write leaves that write's temporary next to it (the rerun
    # leaves it: another run may be writing into OUT; docs/infer.md); the mask itself is whole.
    leftovers = {k for k in masks if ATOMIC_TMP_INFIX in k}
    assert all(k.split(ATOMIC_TMP_INFIX)[0] in masks for k in leftovers)
    finished = {k: v for k, v in masks.items() if k not in leftovers}
    assert finished == {k: v for k, v in s3.objects(INFER_OUT).items() if k.startswith("masks/")}


def test_a_beam_worker_that_imports_segops_can_write_empty_s3_objects():
    """A worker process imports apache_beam first, then unpickles segops code: importing segops
    there patches Beam's S3 uploader and client (the launcher patches them when it configures storage)."""
    code = ("import apache_beam, segops\n"
            "from apache_beam.io.aws import s3io\n"
            "assert getattr(s3io.S3Uploader.finish, '_segops_empty_fix', False)\n"
            "assert getattr(s3io.boto3_client.Client.__init__, '_segops_shared_client', False)\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=120)


def test_beams_s3_filesystem_builds_one_client_and_each_reader_keeps_its_own_position(s3):
    """Beam makes an S3IO per file operation; segops.core.beam_s3 has them share one boto3
    client per configuration (building one costs a few tenths of a second of CPU), while two
    objects read in turn, chunk by chunk, through two open files still each read their own bytes."""
    from apache_beam.io.aws import s3io
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from segops.core import storage

    options = storage.configure(s3.beam_args)
    contents = {f"s3://{BUCKET}/readers/{name}": bytes(range(256)) * 40 + name.encode() for name in ("a", "b")}
    for uri, data in contents.items():
        with FileSystems.create(uri) as f:
            f.write(data)
    clients = {id(s3io.S3IO(options=options).client.client) for _ in range(3)}
    other = s3io.S3IO(options=PipelineOptions([*s3.beam_args[:-1], "--s3_region_name=eu-west-1"])).client.client
    assert len(clients) == 1 and id(other) not in clients  # one per configuration
    with environment({"AWS_DEFAULT_REGION": "eu-west-2"}):  # what boto3 reads for an unset option counts too
        assert id(s3io.S3IO(options=options).client.client) not in clients
    readers = {uri: s3io.S3IO(options=options).open(uri, read_buffer_size=1000) for uri in contents}
    read: dict[str, bytes] = dict.fromkeys(contents, b"")
    while any(len(read[uri]) < len(data) for uri, data in contents.items()):
        for uri, reader in readers.items():
            read[uri] += reader.read(777)
    assert read == contents
