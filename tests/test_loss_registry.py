"""The loss registry: a term added as one new module (here a throwaway "mae" term with a
hyper-parameter) is parsed by --loss, computed by SegmentationLoss and compile_model against
numpy, and, dropped into the terms package, gets its `segops train` flag, option and JSON key
without Keras being imported; registration refuses inconsistent terms."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from segops.core.labels import NUM_CLASSES
from segops.training.losses import spec
from segops.training.options import JSON_KEYS, TrainOptions

MAE_TERM = '''"""A throwaway loss term: mean over valid pixels of mean_c |p_c - onehot_c| ** power."""

from segops.training.losses.spec import HParam, loss_term
from segops.training.losses.targets import logits_and_targets, ops, safe_divide

MAE_POWER = HParam("mae_power", "power", 1.0, low=1, help="MAE: exponent of the absolute errors.")


@loss_term("mae", hparams=(MAE_POWER,))
def mean_absolute_error(y_true, logits, power=1.0):
    logits, labels, valid, _, num_classes = logits_and_targets(y_true, logits)
    errors = ops.abs(ops.softmax(logits, axis=-1) - ops.one_hot(labels, num_classes, dtype="float32"))
    per_pixel = ops.mean(ops.power(errors, power), axis=-1)
    return safe_divide(ops.sum(valid * per_pixel), ops.sum(valid))
'''


def _np_ce_and_mae(logits, labels, power):
    """(mean CE, mean over pixels of mean_c |p - onehot|^power), both over labels != 255."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    onehot = np.eye(logits.shape[-1])[safe]
    ce = -(onehot * logp).sum(-1)
    mae = (np.abs(np.exp(logp) - onehot) ** power).mean(-1)
    return ce[valid].mean(), mae[valid].mean()


@pytest.fixture
def mae_registered(tmp_path, monkeypatch):
    """The mae term registered from its own module, in a registry copy dropped after the test."""
    monkeypatch.setattr(spec, "_REGISTRY", dict(spec.registry()))
    path = tmp_path / "mae_term.py"
    path.write_text(MAE_TERM)
    module_spec = importlib.util.spec_from_file_location("mae_term", path)
    module_spec.loader.exec_module(importlib.util.module_from_spec(module_spec))
    return spec.get_term("mae")


def _batch(seed=0, n=2, h=8, w=8, classes=NUM_CLASSES):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, h, w, classes)).astype("float32")
    labels = rng.integers(0, classes, (n, h, w)).astype("int32")
    labels[rng.random((n, h, w)) < 0.25] = 255
    return logits, labels


def test_a_new_module_adds_a_term_the_loss_computes(mae_registered):
    from segops.training.losses import SegmentationLoss

    assert spec.term_names()[-1] == "mae" and spec.parse_loss("CE*0.5 + mae") == (("ce", 0.5), ("mae", 1.0))
    assert spec.loss_syntax().endswith("focal, ohem, mae") and spec.all_hparams()[-1].name == "mae_power"
    logits, labels = _batch()
    loss = SegmentationLoss("ce*0.5+mae", mae_power=2.0)
    ce, mae = _np_ce_and_mae(logits, labels, 2.0)
    np.testing.assert_allclose(float(loss(labels, logits)), 0.5 * ce + mae, rtol=1e-5)
    config = loss.get_config()
    assert config["mae_power"] == 2.0 and list(config)[-4:] == ["focal_gamma", "ohem_fraction", "ohem_threshold",
                                                                 "mae_power"]  # fmt: skip
    assert float(SegmentationLoss.from_config(config)(labels, logits)) == float(loss(labels, logits))
    default = SegmentationLoss("mae")  # the HParam's default
    np.testing.assert_allclose(float(default(labels, logits)), _np_ce_and_mae(logits, labels, 1.0)[1], rtol=1e-5)


def test_compile_model_trains_on_a_new_term(mae_registered):
    import keras

    from segops.training.loop import compile_model

    opts = TrainOptions.from_flat(prepared="p", out="o", model="unet", depth=1, base_filters=2, loss="ce*0.5+mae",
                                  class_weights="none")  # fmt: skip
    assert opts.optim.loss == "ce*0.5+mae"
    keras.utils.set_random_seed(0)
    model = opts.model.build()
    compile_model(model, opts, class_weights=None, steps=1)
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    _, labels = _batch(2)
    ce, mae = _np_ce_and_mae(model.predict(images, verbose=0), labels, 1.0)
    got = model.evaluate(images, labels, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(got, 0.5 * ce + mae, rtol=1e-4)
    history = model.fit(images, labels, epochs=5, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0]


DROPPED_IN = """
import json, sys
import segops.training.losses.terms as terms
terms.__path__.append(sys.argv[1])
from click.testing import CliRunner
from segops.cli import cli
from segops.training.options import JSON_KEYS, OptimOptions, TrainError, TrainOptions
runner = CliRunner()
try:
    OptimOptions(mae_power=0.5)
except TrainError as exc:
    refused = str(exc)
print(json.dumps({
    "help": runner.invoke(cli, ["train", "--help"]).output,
    "bad_flag": runner.invoke(cli, ["train", "p", "o", "--loss", "mae", "--mae-power", "0.5"]).output,
    "json_keys": list(JSON_KEYS),
    "recorded": TrainOptions.from_flat(prepared="p", out="o", loss="mae*2", mae_power=3.0).to_json(),
    "refused": refused,
    "keras": "keras" in sys.modules,
}))
"""


def test_a_module_dropped_into_the_terms_package_gets_flag_option_and_json_key(tmp_path):
    (tmp_path / "mae.py").write_text(MAE_TERM)
    run = subprocess.run([sys.executable, "-c", DROPPED_IN, str(tmp_path)], capture_output=True, text=True, check=True)
    out = json.loads(run.stdout)
    assert "--mae-power FLOAT RANGE" in out["help"] and "MAE: exponent of the absolute errors." in out["help"]
    assert "focal, ohem, mae (e.g." in " ".join(out["help"].split())
    assert "Invalid value for '--mae-power': 0.5 is not in the range x>=1." in out["bad_flag"]
    assert out["refused"] == "--mae-power must be >= 1"
    assert out["json_keys"] == [*JSON_KEYS, "mae_power"]  # recorded runs keep their keys and order
    assert out["recorded"]["loss"] == "mae*2" and list(out["recorded"])[-1] == "mae_power"
    assert out["recorded"]["mae_power"] == 3.0 and not out["keras"]


def _ce_like(y_true, logits, gamma=2.0, class_weights=None):
    return 0.0


@pytest.mark.parametrize(("register", "message"), [
    (lambda: spec.loss_term("ce")(_ce_like), "already registered"),
    (lambda: spec.loss_term("Soft CE")(_ce_like), "lowercase identifier"),
    (lambda: spec.loss_term("x", settings=("epsilon",))(_ce_like), "takes no epsilon"),
    (lambda: spec.loss_term("x", settings=("alpha",))(_ce_like), "unknown settings"),
    (lambda: spec.loss_term("x", hparams=(spec.HParam("x_gamma", "gamma", 3.0, "h"),))(_ce_like), "defaulting to 3.0"),
    (lambda: spec.loss_term("x", hparams=(spec.HParam("x_beta", "beta", 1.0, "h"),))(_ce_like), "no keyword beta"),
    (lambda: spec.loss_term("x", hparams=(spec.HParam("focal_gamma", "gamma", 2.0, "h"),))(_ce_like), "another term"),
])  # fmt: skip
def test_registration_refuses_inconsistent_terms(monkeypatch, register, message):
    monkeypatch.setattr(spec, "_REGISTRY", dict(spec.registry()))
    with pytest.raises(ValueError, match=message):
        register()
    assert "x" not in spec.registry()


def test_hparam_ranges_and_messages():
    gamma, fraction, threshold = spec.all_hparams()
    assert [hp.flag for hp in (gamma, fraction, threshold)] == ["--focal-gamma", "--ohem-fraction", "--ohem-threshold"]
    assert gamma.problem(0.0) is None and gamma.problem(-1e-9) == "--focal-gamma must be >= 0"
    assert fraction.problem(1.0) is None and fraction.problem(0.0) == "--ohem-fraction must be in (0, 1]"
    assert threshold.problem(None) is None and threshold.problem(1.5) == "--ohem-threshold must be in (0, 1]"
    assert fraction.problem(None) == "--ohem-fraction must be in (0, 1]" and gamma.problem(float("nan"))
