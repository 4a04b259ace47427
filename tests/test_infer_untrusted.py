"""`segops infer` against model directories it must not trust (a Lambda layer, a model.json
leading outside its directory, a missing export, a graph that writes files) and on a disk that
fills up during the run (ENOSPC injected into Beam's local filesystem, then space freed)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner
from test_prepare_faults import FullDisk, leftovers
from trainutil import synth_val_and_tiny_unet

from segops.cli import cli
from segops.inference.table import read_metrics
from segops.models import export_dir

pytestmark = pytest.mark.slow
H, W = 32, 64
IMAGES = 4


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return synth_val_and_tiny_unet(tmp_path_factory.mktemp("untrusted"), IMAGES, H, W, data_seed=5, model_seed=6)


def infer(model: Path, data: Path, out: Path):
    return CliRunner().invoke(cli, ["infer", str(model), str(data), str(out), "--split", "val", "--no-crf"])


def train_run_dir(tmp_path: Path, model: Path, default_export: str) -> Path:
    """A train OUT whose model.json names ``default_export``; a real export sits beside it."""
    shutil.copytree(model, tmp_path / "elsewhere")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"default_export": default_export}))
    return run


@pytest.mark.parametrize("default_export", ["../elsewhere", "{tmp}/elsewhere", "best/../../elsewhere"])
def test_a_model_json_pointing_outside_its_directory_is_refused(archive, tmp_path, default_export):
    model, data = archive
    run = train_run_dir(tmp_path, model, default_export.format(tmp=tmp_path))
    result = infer(run, data, tmp_path / "out")
    assert result.exit_code == 1
    assert "default_export" in result.output and "out of the model directory" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out" / "masks").exists()


def test_a_symlink_leading_outside_the_model_directory_is_refused(archive, tmp_path):
    model, data = archive
    run = train_run_dir(tmp_path, model, "best")
    (run / "best").symlink_to(tmp_path / "elsewhere")
    result = infer(run, data, tmp_path / "out")
    assert result.exit_code == 1 and "outside the model directory" in result.output


def test_a_missing_export_is_refused(archive, tmp_path):
    model, data = archive
    run = train_run_dir(tmp_path, model, "best")  # no run/best
    result = infer(run, data, tmp_path / "out")
    assert result.exit_code == 1 and "holds no model.json" in result.output


def test_a_keras_file_with_a_lambda_layer_is_refused_and_never_run(archive, tmp_path):
    import keras

    model, _ = archive
    model_copy = tmp_path / "lambda"
    shutil.copytree(model, model_copy)
    ran = tmp_path / "lambda-ran"
    inputs = keras.Input((H, W, 3))
    # a lambda without a closure (Keras stores its bytecode) that leaves a mark when it runs
    mark = eval(f"lambda x: x * 0 + float(__import__('pathlib').Path({str(ran)!r}).touch() is None)")  # noqa: S307
    outputs = keras.layers.Lambda(mark)(inputs)
    keras.Model(inputs, outputs).save(model_copy / "model.keras")
    ran.unlink()  # touched while the model was built, not by loading it
    with pytest.raises(export_dir.ModelError, match="Lambda layer"):
        export_dir.load_keras_model(str(model_copy))
    assert not ran.exists()
    assert len(export_dir.load_keras_model(str(model)).weights) > 0  # our own export loads


def test_a_saved_model_that_writes_files_is_refused(archive, tmp_path):
    import tensorflow as tf

    model, data = archive
    model_copy = tmp_path / "writer"
    shutil.copytree(model, model_copy)
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        tf.io.write_file(str(tmp_path / "written"), "pwned")
        probs = tf.ones(tf.concat([tf.shape(images)[:3], [19]], 0), tf.float32) / 19.0
        return {"probabilities": probs}

    module.serve = serve
    shutil.rmtree(model_copy / "saved_model")
    tf.saved_model.save(module, str(model_copy / "saved_model"), signatures={"serving_default": serve})
    result = infer(model_copy, data, tmp_path / "out")
    assert result.exit_code == 1 and "WriteFile" in result.output
    assert not (tmp_path / "written").exists()


def test_infer_on_a_full_disk_fails_naming_the_path_and_a_rerun_after_freeing_space_completes(
    archive, tmp_path, monkeypatch
):
    model, data = archive
    out = tmp_path / "out"
    FullDisk(out, free=2_000).install(monkeypatch)  # room for the masks of about one image
    result = infer(model, data, out)
    assert result.exit_code == 1
    assert "No space left on device" in result.output and str(out) in result.output
    assert "Traceback" not in result.output
    assert read_metrics(str(out)).num_rows == 0 and not (out / "manifest.json").exists()
    assert not [p for p in (out / "masks").rglob("*") if ".tmp-" in p.name]  # nothing half-written
    monkeypatch.undo()  # space freed
    result = infer(model, data, out)
    assert result.exit_code == 0, result.output
    paths = read_metrics(str(out), ["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == IMAGES
    pngs = sorted((out / "masks").rglob("*.png"))
    assert len(pngs) == 3 * IMAGES
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2] == (H, W) for p in pngs)
    assert [p for p in leftovers(out) if "/masks/" in p or p.startswith("masks")] == []


def test_what_killed_runs_left_is_removed_once_a_day_old_and_a_running_run_is_left_alone(tmp_path):
    from segops.inference.table import remove_stale_staging

    out = tmp_path / "out"
    old = time.time() - 2 * 86400
    killed_early = out / ".staging" / "killed-early" / "beam-temp-part-1"  # only empty directories
    killed_late = out / ".staging" / "killed-late"
    sink_temp = out / "beam-temp-dead_letter.jsonl-1"
    running = out / ".staging" / "running"
    for d in (killed_early, killed_late, sink_temp, running):
        d.mkdir(parents=True)
    (killed_late / "part-1.parquet").write_bytes(b"rows")
    (running / "part-2.parquet").write_bytes(b"rows")
    for path in (killed_early, killed_early.parent, killed_late / "part-1.parquet", sink_temp):
        os.utime(path, (old, old))
    os.utime(running, (old, old))  # an old directory whose newest file is fresh: still running
    killed_late.touch()  # a fresh directory whose files are old: killed (the files date a run)
    assert remove_stale_staging(str(out)) == sorted(str(p) for p in (killed_early.parent, killed_late, sink_temp))
    assert sorted(p.name for p in (out / ".staging").iterdir()) == ["running"]
    assert not sink_temp.exists() and (running / "part-2.parquet").exists()
