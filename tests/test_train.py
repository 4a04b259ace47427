"""Training loop: exact resume, outputs and exports, corrupt records, early stopping, bad input."""

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from trainutil import write_prepared

from segops.cli import cli
from segops.core import labels
from segops.core.options import OptionsError
from segops.models import export_dir
from segops.training.loop import train
from segops.training.options import JSON_KEYS, TrainOptions
from segops.training.state import RunState

TINY = {"model": "unet", "depth": 2, "base_filters": 4, "batch_size": 4, "crop": (16, 32), "verbose": 0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """8 train records in 2 shards, one of them corrupted on disk (its data checksum fails): every
    run below must skip it, count it and still be exact."""
    root = tmp_path_factory.mktemp("prepared")
    write_prepared(str(root), {"train": 8, "val": 4}, height=16, width=32, weight_maps=True)
    shard = root / "train/train-00000-of-00002.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 0x55  # inside the first record's payload
    shard.write_bytes(bytes(raw))
    return str(root)


class _Interrupt(keras.callbacks.Callback):
    """Simulates a killed job right after the first epoch's checkpoint."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


def test_resume_gives_the_weights_of_an_uninterrupted_run(prepared, tmp_path):
    opts = {**TINY, "prepared": prepared, "epochs": 2, "dropout": 0.3, "weight_maps": True,
            "class_weights": "median_frequency", "seed": 3, "export": False}  # fmt: skip
    straight = train(TrainOptions.from_flat(out=str(tmp_path / "a"), **opts))
    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions.from_flat(out=str(tmp_path / "b"), **opts), extra_callbacks=[_Interrupt()])
    state = json.loads((tmp_path / "b/checkpoints/state.json").read_text())
    assert state["epoch"] == 1 and state["checkpoint"] == "epoch-0001.keras" and state["corrupt_records"] == 1
    resumed = train(TrainOptions.from_flat(out=str(tmp_path / "b"), resume=True, **opts))

    a = keras.saving.load_model(str(tmp_path / "a/checkpoints/epoch-0002.keras"))
    b = keras.saving.load_model(str(tmp_path / "b/checkpoints/epoch-0002.keras"))
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
    # Optimizer state too: step counter (drives the poly learning rate) and Adam moments.
    assert int(b.optimizer.iterations.numpy()) == 2 * (8 // 4)
    for va, vb in zip(a.optimizer.variables, b.optimizer.variables, strict=True):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-6, atol=1e-7)
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history]
    assert (tmp_path / "a/history.csv").read_text() == (tmp_path / "b/history.csv").read_text()
    assert resumed.epochs_trained == 2


def test_outputs_history_and_exports(prepared, tmp_path):
    out = tmp_path / "run"
    # mixed_float16 on purpose: the exports must still be float32 models. No --crop: the auto crop
    # comes from the prepared records (16x32, already a multiple of U-Net's stride 4) and is recorded.
    tiny = {k: v for k, v in TINY.items() if k != "crop"}
    opts = TrainOptions.from_flat(prepared=prepared, out=str(out), epochs=2, loss="ce+dice", precision="mixed_float16", **tiny)
    result = train(opts)
    assert keras.config.dtype_policy().name == "float32"  # the global policy was restored
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    for key in ("loss", "val_loss", "val_mean_iou", "val_mean_dice", "lr", "val_iou_road", "val_iou_traffic_light"):
        assert key in header
    assert history[1]["lr"] < history[0]["lr"]  # poly decay
    summary = json.loads((out / "model.json").read_text())
    assert summary["default_export"] == "best" and summary["best"]["epoch"] == result.best_epoch
    assert summary["corrupt_records"] == result.corrupt_records == 1  # skipped, counted, not fatal
    assert max(r["val_mean_iou"] for r in history) == pytest.approx(result.best_val_mean_iou)
    assert list(os.listdir(out / "logs"))  # TensorBoard event files

    info = export_dir.load_info(str(out))  # follows default_export -> best/
    export_dir.check_compatible(info)
    assert info.architecture == "unet" and info.stride == 4 and info.input_size == (16, 32)
    assert info.training["loss"] == "ce+dice" and info.training["hparams"]["depth"] == 2
    assert info.training["crop"] is None and info.training["crop_used"] == [16, 32]  # given as auto, used as read
    # the weights it trained with, for `segops infer --prior-correction`
    recorded = json.loads((Path(prepared) / "class_weights.json").read_text())["schemes"][info.training["class_weight_scheme"]]
    assert info.training["class_weights"] == pytest.approx(recorded)
    assert info.metrics["val_mean_iou"] == pytest.approx(result.best_val_mean_iou)
    assert set(info.metrics["val_iou_per_class"]) == set(labels.CLASS_NAMES)
    images = np.random.default_rng(0).integers(0, 256, (1, 16, 32, 3), dtype=np.uint8)
    probs = export_dir.load_serving_fn(str(out))(images=images)["probabilities"].numpy()
    assert probs.shape == (1, 16, 32, 19)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    best = keras.saving.load_model(str(out / "best/model.keras"))
    assert best.dtype_policy.name == "float32" and all(w.dtype == "float32" for w in best.weights)
    expected = keras.ops.softmax(best(images.astype("float32")), axis=-1)
    np.testing.assert_allclose(probs, keras.ops.convert_to_numpy(expected), atol=1e-5)


def test_early_stopping_counts_epochs_since_best(tmp_path):
    opts = TrainOptions.from_flat(prepared="", out=str(tmp_path), early_stopping=2)
    run = RunState(opts, str(tmp_path), True, corrupt=type("C", (), {"count": 0})())
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    for epoch, miou in enumerate([0.2, 0.5, 0.4, 0.5]):
        run.end_epoch(model, epoch, {"val_mean_iou": miou}, {})
        assert getattr(model, "stop_training", False) == (epoch == 3), epoch  # best at epoch 2, two epochs without a better one
    assert run.best_epoch == 2
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.keras"))
    assert kept == ["epoch-0002.keras", "epoch-0004.keras"]  # the best and the last


def _cli_train(prepared, out, *args):
    return CliRunner().invoke(cli, ["train", prepared, out, "--epochs", "1", "--crop", "16x32", "--model", "unet", "--depth", "2",
                                    "--class-weights", "none", *args])


def test_bad_prepared_dirs_fail_before_training(tmp_path, prepared):
    out = tmp_path / "out"
    r = _cli_train(str(tmp_path / "missing"), str(out))
    assert r.exit_code == 2 and "does not exist" in r.output

    (tmp_path / "empty").mkdir()
    r = _cli_train(str(tmp_path / "empty"), str(out))
    assert r.exit_code == 2 and "no manifest.json" in r.output

    old = tmp_path / "old"
    write_prepared(str(old), {"train": 1, "val": 1}, height=16, width=32, class_weights=False)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 0}))
    r = _cli_train(str(old), str(out))
    assert r.exit_code == 2 and "schema version 0" in r.output and "prepare" in r.output

    (old / "manifest.json").write_text(json.dumps(manifest))
    r = _cli_train(str(old), str(out), "--class-weights", "enet")
    assert r.exit_code == 2 and "class_weights.json" in r.output
    r = _cli_train(str(old), str(out), "--weight-maps")
    assert r.exit_code == 2 and "without weight maps" in r.output

    for shard in (old / "train").iterdir():
        shard.unlink()
    r = _cli_train(str(old), str(out))
    assert r.exit_code == 2 and "no train-*-of-*.tfrecord shards" in r.output

    r = _cli_train(prepared, str(out), "--model", "fcn8s")
    assert r.exit_code == 2 and "multiples of 32" in r.output
    r = _cli_train(prepared, str(out), "--crop", "16by32")
    assert r.exit_code == 2 and "HxW" in r.output
    assert not (out / "checkpoints").exists()


def test_existing_run_needs_resume_with_same_options(tmp_path, prepared):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    defaults = TrainOptions.from_flat(prepared=prepared, out=str(out))
    state = {"options": {**defaults.to_json(), "lr": 0.5}}
    (out / "checkpoints/state.json").write_text(json.dumps(state))
    r = CliRunner().invoke(cli, ["train", prepared, str(out)])
    assert r.exit_code == 2 and "--resume" in r.output
    r = CliRunner().invoke(cli, ["train", prepared, str(out), "--resume"])
    assert r.exit_code == 2 and f"lr (was 0.5, now {defaults.optim.lr!r})" in r.output  # the default model's lr
    assert not Path(out / "history.json").exists()
    # A run recorded before an option existed used its default: that key alone never differs,
    # a set value does.
    old = {k: v for k, v in state["options"].items() if k != "focal_gamma"}
    (out / "checkpoints/state.json").write_text(json.dumps({"options": old}))
    r = CliRunner().invoke(cli, ["train", prepared, str(out), "--resume", "--focal-gamma", "3"])
    assert r.exit_code == 2 and "focal_gamma (was 2.0, now 3.0)" in r.output and "lr (was 0.5" in r.output


def test_help_lists_every_option():
    r = CliRunner().invoke(cli, ["train", "--help"])
    assert r.exit_code == 0
    for option in ("--model", "--epochs", "--batch-size", "--crop", "--lr", "--loss", "--class-weights",
                   "--weight-maps", "--depth", "--base-filters", "--upsampling", "--precision", "--xla",
                   "--resume", "--early-stopping", "--seed", "--val-size"):  # fmt: skip
        assert option in r.output


def test_flat_options_round_trip_in_the_recorded_key_order():
    opts = TrainOptions.from_flat(prepared="p", out="o", model="fcn8s", crop=(64, 96), val_size=(32, 64), dropout=0.2)
    flat = opts.to_json()
    assert list(flat) == list(JSON_KEYS)  # state.json / model.json key order
    assert flat["model"] == "fcn8s" and flat["crop"] == [64, 96] and flat["weight_maps"] is False
    assert TrainOptions.from_flat(**flat) == opts
    assert opts.model.hparams() == {"base_filters": 32, "dropout": 0.2, "dilated": False, "backbone": "none",
                                    "backbone_weights": "none"}  # fmt: skip
    with pytest.raises(OptionsError, match="multiples of 32 for fcn8s"):
        TrainOptions.from_flat(prepared="p", out="o", model="fcn8s", crop=(16, 32))


def test_two_processes_train_bit_identical_weights(tmp_path):
    """What the README's determinism claim rests on: the same `segops train` command in two fresh
    processes on one machine (same CPU, same thread count) gives bit-identical weights, optimizer
    state and history, with TensorFlow's default (multi-threaded oneDNN) kernels."""
    import subprocess
    import sys

    from segops.training import metrics  # noqa: F401  (registers the classes the checkpoints name)
    from segops.training.losses import total  # noqa: F401

    prepared = tmp_path / "prepared"
    write_prepared(str(prepared), {"train": 4, "val": 2}, height=64, width=128)
    flags = ["--model", "unet", "--depth", "2", "--base-filters", "8", "--batch-size", "4", "--crop", "64x128", "--epochs", "1",
             "--class-weights", "none", "--dropout", "0.2", "--no-progress", "--no-export"]  # fmt: skip
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        subprocess.run([sys.executable, "-c", "from segops.cli import main; main()", "train", str(prepared),
                        str(out), *flags], check=True, capture_output=True)  # fmt: skip
    a, b = (keras.saving.load_model(str(out / "checkpoints/epoch-0001.keras")) for out in outs)
    assert len(a.get_weights()) == len(b.get_weights()) > 0
    for wa, wb in zip(a.get_weights() + [v.numpy() for v in a.optimizer.variables],
                      b.get_weights() + [v.numpy() for v in b.optimizer.variables], strict=True):  # fmt: skip
        assert np.array_equal(wa, wb)  # same machine and kernels, seeded and deterministic ops: bit-equal holds
    assert (outs[0] / "history.json").read_text() == (outs[1] / "history.json").read_text()
