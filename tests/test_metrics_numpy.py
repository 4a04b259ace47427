"""Numpy metric definitions against hand counts."""

import numpy as np

from segops.core import metrics


def test_confusion_matrix_skips_ignore_and_counts_pairs():
    gt = np.array([[0, 0, 1], [255, 2, 2]], np.uint8)
    pred = np.array([[0, 1, 1], [0, 2, 0]], np.uint8)
    cm = metrics.confusion_matrix(gt, pred, num_classes=3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    assert np.array_equal(cm, expected)


def test_iou_dice_by_hand_with_absent_class_null():
    cm = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    iou = metrics.iou_per_class(cm)
    dice = metrics.dice_per_class(cm)
    # class 0: tp1 fp1 fn1 ; class 1: tp1 fp1 fn0 ; class 2: tp1 fp0 fn1 ; class 3 absent
    assert np.allclose(iou[:3], [1 / 3, 1 / 2, 1 / 2])
    assert np.allclose(dice[:3], [2 / 4, 2 / 3, 2 / 3])
    assert np.isnan(iou[3]) and np.isnan(dice[3])
    assert np.isclose(metrics.mean_iou(cm), (1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert np.isclose(metrics.pixel_accuracy(cm), 3 / 5)


def test_class_predicted_but_absent_from_gt_scores_zero():
    cm = np.array([[2, 1], [0, 0]])  # class 1 predicted once, never in gt
    assert metrics.iou_per_class(cm)[1] == 0.0
