"""Losses against independent numpy computations (ignore pixels, class and pixel weights,
absent classes; Lovász-softmax against the authors' algorithm written out below), gradients
against finite differences of those references, gradients at all-ignore batches, float16
safety, the --loss spec, and one training step with ce+lovasz+ohem."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from trainutil import write_prepared

from segops.cli import cli
from segops.core.options import OptionsError
from segops.training.losses import (
    SegmentationLoss,
    focal_loss,
    lovasz_softmax_loss,
    ohem_cross_entropy,
    soft_dice_loss,
    soft_jaccard_loss,
    weighted_cross_entropy,
)
from segops.training.options import OptimOptions, parse_loss

C = 5


def _batch(seed=0, n=2, h=6, w=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, h, w, C)).astype("float32")
    labels = rng.integers(0, C, (n, h, w)).astype("int32")
    labels[rng.random((n, h, w)) < 0.25] = 255
    pixel_w = rng.uniform(0.5, 3.0, (n, h, w)).astype("float32")
    return logits, labels, pixel_w


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_wce(logits, labels, pixel_w=None, class_w=None):
    """sum(w * -log p_y) / sum(w) over labels != 255: the focal reference with gamma 0."""
    return _np_focal(logits, labels, 0.0, pixel_w, class_w)


def _np_focal(logits, labels, gamma, pixel_w=None, class_w=None):
    """Loop over pixels: sum(w * (1 - p_y)^gamma * -log p_y) / sum(w) over labels != 255."""
    logp = _np_log_softmax(logits.astype(np.float64))
    num = den = 0.0
    for idx in np.ndindex(labels.shape):
        y = labels[idx]
        if y == 255:
            continue
        w = (1.0 if pixel_w is None else pixel_w[idx]) * (1.0 if class_w is None else class_w[y])
        num += w * (1 - math.exp(logp[idx][y])) ** gamma * -logp[idx][y]
        den += w
    return num / den if den else 0.0


def _np_overlap_loss(logits, labels, score):
    """1 - mean over the classes present in the valid ground truth of score(sum p*g, sum p, sum g)."""
    p = np.exp(_np_log_softmax(logits.astype(np.float64)))
    valid = labels != 255
    scores = []
    for c in range(C):
        g = (labels == c) & valid
        if not g.any():
            continue  # averaged over the classes present in the ground truth
        pc = p[..., c] * valid
        scores.append(score((pc * g).sum(), pc.sum(), g.sum()))
    return 1 - np.mean(scores) if scores else 0.0


def _np_dice(logits, labels, eps=1.0):
    return _np_overlap_loss(logits, labels, lambda inter, ps, gs: (2 * inter + eps) / (ps + gs + eps))


def _packed(labels, pixel_w):
    return np.stack([labels.astype("float32"), pixel_w], -1)


def test_weighted_ce_matches_numpy_with_class_and_pixel_weights():
    logits, labels, pixel_w = _batch()
    class_w = [0.5, 1.0, 2.0, 0.0, 4.0]
    got = float(weighted_cross_entropy(_packed(labels, pixel_w), logits, class_w))
    np.testing.assert_allclose(got, _np_wce(logits, labels, pixel_w, class_w), rtol=1e-5)
    # Plain labels: pixel weights 1; and pixel weights switched off on packed targets.
    plain = float(weighted_cross_entropy(labels, logits))
    np.testing.assert_allclose(plain, _np_wce(logits, labels), rtol=1e-5)
    off = float(weighted_cross_entropy(_packed(labels, pixel_w), logits, use_pixel_weights=False))
    np.testing.assert_allclose(off, plain, rtol=1e-6)


def test_ignore_pixels_do_not_contribute():
    logits, labels, pixel_w = _batch(1)
    changed = logits.copy()
    changed[labels == 255] = np.random.default_rng(9).normal(0, 50, (int((labels == 255).sum()), C))
    loss = SegmentationLoss("ce+dice", class_weights=[1.0] * C, num_classes=C)
    a = float(loss(_packed(labels, pixel_w), logits))
    b = float(loss(_packed(labels, pixel_w), changed))
    assert a == pytest.approx(b, rel=1e-6)


def test_soft_dice_matches_numpy_and_skips_absent_classes():
    logits, labels, _ = _batch(2)
    labels[labels == 3] = 0  # class 3 absent from the ground truth
    got = float(soft_dice_loss(labels, logits, epsilon=1.0))
    np.testing.assert_allclose(got, _np_dice(logits, labels), rtol=1e-5)
    # Perfect, confident prediction of the present classes: Dice loss ~ 0 (absent classes don't count as 0).
    perfect = np.where(np.eye(C, dtype=bool)[np.where(labels == 255, 0, labels)], 30.0, -30.0).astype("float32")
    assert float(soft_dice_loss(labels, perfect)) == pytest.approx(0.0, abs=1e-6)


def test_combined_is_the_weighted_sum():
    logits, labels, pixel_w = _batch(3)
    y = _packed(labels, pixel_w)
    ce = float(SegmentationLoss("ce", num_classes=C)(y, logits))
    dice = float(SegmentationLoss("dice", num_classes=C)(y, logits))
    both = float(SegmentationLoss("ce+dice", ce_weight=0.3, dice_weight=2.0, num_classes=C)(y, logits))
    assert both == pytest.approx(0.3 * ce + 2.0 * dice, rel=1e-6)
    np.testing.assert_allclose(ce, _np_wce(logits, labels, pixel_w), rtol=1e-5)


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
def test_all_ignore_batch_gives_zero_loss_and_finite_gradients(kind):
    logits = tf.Variable(np.random.default_rng(4).normal(0, 1, (2, 4, 4, C)).astype("float32"))
    labels = np.full((2, 4, 4), 255, "int32")
    loss_fn = SegmentationLoss(kind, class_weights=[1.0] * C, num_classes=C)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, logits)
    grad = tape.gradient(loss, logits).numpy()
    assert float(loss) == 0.0
    assert np.isfinite(grad).all() and not grad.any()


def test_zero_weights_everywhere_is_finite():
    logits, labels, _ = _batch(5)
    got = weighted_cross_entropy(_packed(labels, np.zeros(labels.shape, "float32")), logits)
    assert float(got) == 0.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_logits_are_safe(dtype):
    logits, labels, pixel_w = _batch(6)
    logits *= 20  # large logits: a float16 softmax/exp would overflow
    y = _packed(labels, pixel_w)
    loss = SegmentationLoss("ce+dice", num_classes=C)
    low = keras.ops.cast(logits, dtype)
    got = float(loss(y, low))
    ref = float(loss(y, keras.ops.cast(low, "float32")))  # same rounded logits in float32
    assert np.isfinite(got)
    assert got == pytest.approx(ref, rel=1e-6)
    # The functions themselves (no Keras Loss wrapper casting first) compute in float32 too.
    ce = weighted_cross_entropy(y, low)
    dice = soft_dice_loss(y, low)
    assert keras.backend.standardize_dtype(ce.dtype) == "float32"
    assert float(ce) + float(dice) == pytest.approx(ref, rel=1e-5)
    # The other terms too, called directly on the low-precision logits.
    for term, (fn, _) in REFERENCES.items():
        value = fn(y, low)
        assert keras.backend.standardize_dtype(value.dtype) == "float32", term
        assert float(value) == pytest.approx(float(fn(y, keras.ops.cast(low, "float32"))), rel=1e-6), term


def test_labels_outside_the_classes_are_ignored_not_gathered():
    logits, labels, _ = _batch(7)
    weird = labels.copy()
    weird[labels == 255] = 200  # any id >= C is invalid like 255
    a = float(weighted_cross_entropy(labels, logits, [1.0] * C))
    b = float(weighted_cross_entropy(weird, logits, [1.0] * C))
    assert a == b


def test_config_round_trip():
    loss = SegmentationLoss("ce+dice", class_weights=[1, 2, 3, 4, 5], use_pixel_weights=False, num_classes=C)
    clone = SegmentationLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="class weights"):
        SegmentationLoss("ce", class_weights=[1.0, 2.0], num_classes=C)


# --- focal, OHEM, Jaccard, Lovász: numpy references ----------------------------------------------


def _np_ohem(logits, labels, fraction, threshold=None, pixel_w=None, class_w=None):
    """Sort the valid pixels by CE, keep the ceil(fraction * n) hardest (and those with p_y < threshold)."""
    logp = _np_log_softmax(logits.astype(np.float64))
    pixels = [idx for idx in np.ndindex(labels.shape) if labels[idx] != 255]
    ce = {idx: -logp[idx][labels[idx]] for idx in pixels}
    ranked = sorted(pixels, key=lambda idx: -ce[idx])
    kept = set(ranked[: max(1, math.ceil(fraction * len(pixels)))])
    if threshold is not None:
        kept |= {idx for idx in pixels if math.exp(-ce[idx]) < threshold}
    num = den = 0.0
    for idx in kept:
        w = (1.0 if pixel_w is None else pixel_w[idx]) * (1.0 if class_w is None else class_w[labels[idx]])
        num, den = num + w * ce[idx], den + w
    return num / den if den else 0.0


def _np_jaccard(logits, labels, eps=1.0):
    return _np_overlap_loss(logits, labels, lambda inter, ps, gs: (inter + eps) / (ps + gs - inter + eps))


def _np_lovasz_grad(gt_sorted):
    """The authors' lovasz_grad: gradient of the Jaccard loss along the sorted errors."""
    gts = gt_sorted.sum()
    intersection = gts - np.cumsum(gt_sorted)
    union = gts + np.cumsum(1.0 - gt_sorted)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def _np_lovasz(logits, labels):
    """The authors' lovasz_softmax(classes='present', per_image=False, ignore=255) on numpy."""
    probas = np.exp(_np_log_softmax(logits.astype(np.float64))).reshape(-1, C)
    flat = labels.reshape(-1)
    probas, flat = probas[flat != 255], flat[flat != 255]  # flatten_probas drops ignored pixels
    losses = []
    for c in range(C):
        fg = (flat == c).astype(np.float64)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - probas[:, c])
        perm = np.argsort(-errors, kind="stable")
        losses.append(float(np.dot(errors[perm], _np_lovasz_grad(fg[perm]))))
    return float(np.mean(losses)) if losses else 0.0


REFERENCES = {  # term -> (the segops function with these settings, its numpy reference)
    "ce": (lambda y, z: weighted_cross_entropy(y, z), lambda z, lab, pw: _np_wce(z, lab, pw)),
    "focal": (lambda y, z: focal_loss(y, z, 1.5), lambda z, lab, pw: _np_focal(z, lab, 1.5, pw)),
    "ohem": (lambda y, z: ohem_cross_entropy(y, z, 0.3), lambda z, lab, pw: _np_ohem(z, lab, 0.3, None, pw)),
    "dice": (lambda y, z: soft_dice_loss(y, z), lambda z, lab, pw: _np_dice(z, lab)),
    "jaccard": (lambda y, z: soft_jaccard_loss(y, z), lambda z, lab, pw: _np_jaccard(z, lab)),
    "lovasz": (lambda y, z: lovasz_softmax_loss(y, z), lambda z, lab, pw: _np_lovasz(z, lab)),
}


def test_focal_matches_numpy_and_is_ce_at_gamma_zero():
    logits, labels, pixel_w = _batch(10)
    class_w = [0.5, 1.0, 2.0, 0.0, 4.0]
    y = _packed(labels, pixel_w)
    for gamma in (0.5, 2.0):
        got = float(focal_loss(y, logits, gamma, class_w))
        np.testing.assert_allclose(got, _np_focal(logits, labels, gamma, pixel_w, class_w), rtol=1e-5)
    assert float(focal_loss(y, logits, 0.0, class_w)) == pytest.approx(float(weighted_cross_entropy(y, logits, class_w)))
    # Mostly right, confident predictions: the easy pixels count ~0, the focal loss is far below the CE.
    right = np.where(np.eye(C, dtype=bool)[np.where(labels == 255, 0, labels)], 4.0, 0.0) + 0.1 * logits
    assert float(focal_loss(labels, right, 2.0)) < 0.05 * float(weighted_cross_entropy(labels, right))


@pytest.mark.parametrize("fraction, threshold", [(0.3, None), (1.0, None), (0.05, 0.4), (1e-9, None)])
def test_ohem_is_the_ce_of_the_hardest_pixels(fraction, threshold):
    logits, labels, pixel_w = _batch(11)
    class_w = [0.5, 1.0, 2.0, 0.3, 4.0]
    got = float(ohem_cross_entropy(_packed(labels, pixel_w), logits, fraction, threshold, class_w))
    want = _np_ohem(logits, labels, fraction, threshold, pixel_w, class_w)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    if fraction == 1.0:  # every pixel kept: the weighted CE
        np.testing.assert_allclose(got, _np_wce(logits, labels, pixel_w, class_w), rtol=1e-5)
    if fraction == 1e-9:  # k = 1: the CE of the hardest valid pixel
        ce = -_np_log_softmax(logits.astype(np.float64))
        assert got == pytest.approx(max(ce[i][labels[i]] for i in np.ndindex(labels.shape) if labels[i] != 255))


def test_soft_jaccard_matches_numpy():
    logits, labels, _ = _batch(12)
    labels[labels == 1] = 4  # class 1 absent: not averaged
    np.testing.assert_allclose(float(soft_jaccard_loss(labels, logits)), _np_jaccard(logits, labels), rtol=1e-5)


@pytest.mark.parametrize("seed", [13, 14, 15])
def test_lovasz_matches_the_reference_implementation(seed):
    logits, labels, _ = _batch(seed)
    if seed == 14:
        labels[labels == 2] = 255  # an absent class
    np.testing.assert_allclose(float(lovasz_softmax_loss(labels, logits)), _np_lovasz(logits, labels), rtol=1e-5)


def test_lovasz_on_hard_predictions_is_one_minus_the_iou():
    _, labels, _ = _batch(16)
    predicted = np.random.default_rng(17).integers(0, C, labels.shape)
    predicted[:1] = np.where(labels[:1] == 255, 0, labels[:1])  # image 0 mostly right, image 1 random
    logits = np.where(np.eye(C, dtype=bool)[predicted], 40.0, -40.0).astype("float32")
    valid = labels != 255
    ious = [((labels == c) & (predicted == c)).sum() / (((labels == c) | (predicted == c)) & valid).sum()
            for c in range(C) if (labels == c).any()]  # fmt: skip
    assert float(lovasz_softmax_loss(labels, logits)) == pytest.approx(1 - np.mean(ious), abs=1e-6)


def _grad(fn, y, logits):
    var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = fn(y, var)
    return float(loss), tape.gradient(loss, var).numpy()


@pytest.mark.parametrize("term", list(REFERENCES))
def test_gradient_matches_finite_differences_and_is_zero_at_ignored_pixels(term):
    fn, ref = REFERENCES[term]
    logits, labels, pixel_w = _batch(18, n=1, h=3, w=4)
    y = _packed(labels, pixel_w)
    _, grad = _grad(fn, y, logits)
    assert not grad[labels == 255].any()  # exactly 0, not just small
    z, step, numeric = logits.astype(np.float64), 1e-5, np.zeros(logits.shape)
    pw64 = pixel_w.astype(np.float64)  # float32 weights would make the references sum in float32
    for idx in np.ndindex(logits.shape):
        hi, lo = z.copy(), z.copy()
        hi[idx] += step
        lo[idx] -= step
        numeric[idx] = (ref(hi, labels, pw64) - ref(lo, labels, pw64)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("term", list(REFERENCES))
def test_ignored_pixels_change_no_term(term):
    fn, _ = REFERENCES[term]
    logits, labels, pixel_w = _batch(19)
    changed = logits.copy()
    changed[labels == 255] = np.random.default_rng(9).normal(0, 50, (int((labels == 255).sum()), C))
    weird = np.where(labels == 255, 77, labels)  # any id >= C is ignored like 255
    y = _packed(labels, pixel_w)
    assert float(fn(y, changed)) == pytest.approx(float(fn(y, logits)), rel=1e-6)
    assert float(fn(_packed(weird, pixel_w), logits)) == pytest.approx(float(fn(y, logits)), rel=1e-6)
    all_ignored = np.full_like(labels, 255)
    value, grad = _grad(fn, _packed(all_ignored, pixel_w), logits)
    assert value == 0.0 and np.isfinite(grad).all() and not grad.any()


def test_spec_sums_the_weighted_terms():
    logits, labels, pixel_w = _batch(20)
    y = _packed(labels, pixel_w)
    loss = SegmentationLoss("ce*0.5 + Lovasz + 2*focal + ohem*0.25 + jaccard", num_classes=C, focal_gamma=1.5,
                            ohem_fraction=0.3)  # fmt: skip
    want = 0.5 * _np_wce(logits, labels, pixel_w) + _np_lovasz(logits, labels)
    want += 2 * _np_focal(logits, labels, 1.5, pixel_w) + 0.25 * _np_ohem(logits, labels, 0.3, None, pixel_w)
    want += _np_jaccard(logits, labels)
    np.testing.assert_allclose(float(loss(y, logits)), want, rtol=1e-5)
    assert loss.kind == "ce*0.5+lovasz+focal*2+ohem*0.25+jaccard" and loss.name == "ce_0_5_lovasz_focal_2_ohem_0_25_jaccard"
    clone = SegmentationLoss.from_config(loss.get_config())
    assert float(clone(y, logits)) == float(loss(y, logits))


def test_parse_loss_and_canonical_options():
    assert parse_loss("ce") == (("ce", 1.0),)
    assert parse_loss(" CE*0.5+lovasz ") == (("ce", 0.5), ("lovasz", 1.0))
    assert parse_loss("0.5*focal+dice") == (("focal", 0.5), ("dice", 1.0))
    assert OptimOptions(loss="Ce + DICE*1").loss == "ce+dice"
    assert OptimOptions(loss="2*ohem").loss == "ohem*2"
    for bad, message in [("", "not a term"), ("ce+", "not a term"), ("ce+ce", "twice"), ("iou", "not a term"),
                         ("ce*x", "not a number"), ("ce*0", "positive"), ("ce*-1", "positive"),
                         ("ce*nan", "positive"), ("ce*2*3", "not a term")]:  # fmt: skip
        with pytest.raises(OptionsError, match=message):
            OptimOptions(loss=bad)
    with pytest.raises(OptionsError, match="ohem-fraction"):
        OptimOptions(ohem_fraction=0.0)
    with pytest.raises(OptionsError, match="focal-gamma"):
        OptimOptions(focal_gamma=-1.0)


def test_one_training_step_with_ce_lovasz_and_ohem(tmp_path):
    prepared = tmp_path / "prepared"
    write_prepared(str(prepared), {"train": 4, "val": 2}, height=16, width=32, weight_maps=True)
    common = [str(prepared), "--model", "unet", "--depth", "2", "--base-filters", "4", "--batch-size", "4",
              "--crop", "16x32", "--epochs", "1", "--steps-per-epoch", "1", "--no-export", "--no-progress"]  # fmt: skip
    bad = CliRunner().invoke(cli, ["train", *common[:1], str(tmp_path / "bad"), *common[1:], "--loss", "ce+iou"])
    assert bad.exit_code == 2 and "'iou' is not a term" in bad.output
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", *common[:1], str(out), *common[1:], "--loss", "CE + lovasz*0.5 + ohem",
                                 "--weight-maps", "--ohem-threshold", "0.7"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (row,) = json.loads((out / "history.json").read_text())
    assert np.isfinite(row["loss"]) and np.isfinite(row["val_loss"]) and row["loss"] > 0
    options = json.loads((out / "checkpoints/state.json").read_text())["options"]
    assert options["loss"] == "ce+lovasz*0.5+ohem" and options["ohem_threshold"] == 0.7
    assert options["focal_gamma"] == 2.0 and options["ohem_fraction"] == 0.25
