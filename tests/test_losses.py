"""Losses against independent numpy computations (ignore pixels, class and pixel weights,
absent classes), gradients at all-ignore batches, float16 safety."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from segops.training.losses import SegmentationLoss, soft_dice_loss, weighted_cross_entropy

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
    """Loop over pixels: sum(w * -log p_y) / sum(w) over labels != 255."""
    logp = _np_log_softmax(logits.astype(np.float64))
    num = den = 0.0
    for idx in np.ndindex(labels.shape):
        y = labels[idx]
        if y == 255:
            continue
        w = (1.0 if pixel_w is None else pixel_w[idx]) * (1.0 if class_w is None else class_w[y])
        num += w * -logp[idx][y]
        den += w
    return num / den if den else 0.0


def _np_dice(logits, labels, eps=1.0):
    p = np.exp(_np_log_softmax(logits.astype(np.float64)))
    valid = labels != 255
    scores = []
    for c in range(C):
        g = (labels == c) & valid
        if not g.any():
            continue  # averaged over the classes present in the ground truth
        pc = p[..., c] * valid
        scores.append((2 * (pc * g).sum() + eps) / (pc.sum() + g.sum() + eps))
    return 1 - np.mean(scores) if scores else 0.0


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
