"""Keras streaming metrics (segops.training.metrics) use the numpy definitions of segops.core.metrics (ignore excluded, classes
absent from both ground truth and prediction excluded from the mean)."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from segops.core import metrics
from segops.training import metrics as keras_metrics

C = 6


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        labels = rng.integers(0, C - 2, (2, 5, 7))  # classes 4, 5 never in the ground truth
        labels[rng.random(labels.shape) < 0.2] = 255
        logits = rng.normal(0, 1, (2, 5, 7, C)).astype("float32")
        logits[..., 5] -= 100  # class 5 never predicted either: it has no score
        out.append((labels, logits))
    return out


def test_streaming_matches_numpy_over_several_batches():
    miou, mdice = keras_metrics.MeanIoU(num_classes=C), keras_metrics.MeanDice(num_classes=C)
    cm = np.zeros((C, C), np.int64)
    for labels, logits in _batches():
        # packed targets [label, weight] for one metric, plain labels for the other
        packed = np.stack([labels, np.ones_like(labels)], -1).astype("float32")
        miou.update_state(packed, logits)
        mdice.update_state(labels, logits)
        cm += metrics.confusion_matrix(labels, logits.argmax(-1), C)
    np.testing.assert_array_equal(miou.confusion_matrix(), cm)
    assert float(miou.result()) == pytest.approx(metrics.mean_iou(cm), rel=1e-6)
    assert float(mdice.result()) == pytest.approx(metrics.mean_dice(cm), rel=1e-6)
    per_class = miou.per_class_iou()
    assert np.isnan(per_class[5]) and not np.isnan(per_class[4])  # 4 is predicted: IoU 0, counted
    assert per_class[4] == 0.0
    np.testing.assert_array_equal(per_class, metrics.iou_per_class(cm))
    # Hand check of the mean: only defined classes.
    assert float(miou.result()) == pytest.approx(np.nanmean(per_class), rel=1e-6)


def test_ignore_pixels_are_not_counted():
    m = keras_metrics.MeanIoU(num_classes=C)
    labels = np.full((1, 2, 2), 255)
    labels[0, 0, 0] = 1
    logits = np.zeros((1, 2, 2, C), "float32")
    logits[..., 1] = 1.0
    m.update_state(labels, logits)
    assert m.confusion_matrix().sum() == 1 and m.confusion_matrix()[1, 1] == 1
    assert float(m.result()) == 1.0


def test_empty_is_nan_and_reset_clears():
    m = keras_metrics.MeanIoU(num_classes=C)
    assert np.isnan(float(m.result()))
    labels, logits = _batches(1)[0]
    m.update_state(labels, logits)
    assert m.confusion_matrix().sum() > 0
    m.reset_state()
    assert m.confusion_matrix().sum() == 0 and np.isnan(float(m.result()))


def test_serializable():
    m = keras_metrics.MeanDice(num_classes=C)
    clone = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert type(clone) is type(m) and clone.num_classes == C and clone.name == "mean_dice"


def test_numpy_users_do_not_import_keras():
    code = "import sys, segops.core.metrics as m; m.mean_iou([[1]]); print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
