"""Metric definitions: confusion matrices, IoU and Dice. One home for both pipelines and training.

Definitions (per class c, over pixels whose ground truth is not ignore):
    IoU_c  = TP / (TP + FP + FN)        Dice_c = 2 TP / (2 TP + FP + FN)
A class absent from both prediction and ground truth has no score (NaN here, null in Parquet),
neither 0 nor 1. Dataset mIoU is computed from the *summed* confusion matrix (the Cityscapes
definition); the mean of per-image mIoU is a different number and is always named as such.

These numpy functions serve the Beam pipelines and tests; the Keras streaming metrics used
during training (:mod:`segops.training.metrics`) evaluate their matrix with them.
"""

from __future__ import annotations

import numpy as np

from segops.core.labels import IGNORE_ID, NUM_CLASSES


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix (rows = ground truth, columns = prediction), int64, ignore excluded.

    Ground-truth pixels equal to ``IGNORE_ID`` (or any id >= num_classes) are skipped, and so
    are predictions outside 0..num_classes-1 (a mapped model's unmapped classes, written as
    ignore: no class can be credited or blamed for them).

    Example:
        >>> gt = np.array([[0, 0, 1], [1, 1, IGNORE_ID]])
        >>> pred = np.array([[0, 1, 1], [1, 0, 0]])
        >>> cm = confusion_matrix(gt, pred, num_classes=2)  # the ignored pixel is not counted
        >>> cm
        array([[1, 1],
               [1, 2]])
        >>> iou_per_class(cm), pixel_accuracy(cm)
        (array([0.33333333, 0.5       ]), 0.6)
    """
    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in size: {gt.shape} vs {pred.shape}")
    valid = gt < num_classes
    if IGNORE_ID < num_classes:  # pragma: no cover - guards a misconfigured table
        raise ValueError("IGNORE_ID must not be a class index")
    gt, pred = gt[valid], pred[valid]
    if pred.size and int(pred.max()) >= num_classes:
        keep = pred < num_classes
        gt, pred = gt[keep], pred[keep]
    idx = gt.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _tp_fp_fn(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return tp, fp, fn


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN where the class is in neither gt nor prediction."""
    tp, fp, fn = _tp_fp_fn(cm)
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice from a confusion matrix; NaN where the class is in neither gt nor prediction."""
    tp, fp, fn = _tp_fp_fn(cm)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def nanmean_or_nan(values: np.ndarray) -> float:
    """Mean over defined entries; NaN (not a warning) when none is defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def mean_iou(cm: np.ndarray) -> float:
    return nanmean_or_nan(iou_per_class(cm))


def mean_dice(cm: np.ndarray) -> float:
    return nanmean_or_nan(dice_per_class(cm))


def pixel_accuracy(cm: np.ndarray) -> float:
    total = float(np.asarray(cm).sum())
    return float(np.trace(cm)) / total if total else float("nan")
