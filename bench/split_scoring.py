"""Scoring helpers the bench/check_*.py scripts share: the (image, trainIds) pairs of a split of a
Cityscapes-layout dataset, a confusion matrix accumulated from label maps, and the mIoU over the
classes present in the ground truth (CamVid has 11 of Cityscapes' 19)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import cv2
import numpy as np


def split_pairs(dataset: str, split: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(image path, RGB uint8, trainIds uint8) for every ``leftImg8bit/SPLIT/*/*_leftImg8bit.png``."""
    from segops.core.labels import to_train_ids

    for path in sorted(glob.glob(os.path.join(dataset, "leftImg8bit", split, "*", "*_leftImg8bit.png"))):
        label_path = path.replace("/leftImg8bit/", "/gtFine/").replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        yield path, rgb, to_train_ids(cv2.imread(label_path, cv2.IMREAD_UNCHANGED))


def add_confusion(confusion: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> None:
    """Count ``predicted`` against ``truth`` (255 = ignore) into ``confusion`` [truth, predicted]."""
    from segops.core.metrics import confusion_matrix

    confusion += confusion_matrix(truth, predicted, len(confusion))


def present_iou(confusion: np.ndarray) -> tuple[float, list[float]]:
    """(mIoU, per-class IoU rounded to 2 places) over the classes present in the ground truth, as
    `segops infer`'s summary reports CamVid (a class only ever predicted is left out, not 0)."""
    from segops.core.metrics import iou_per_class

    iou = iou_per_class(confusion)[confusion.sum(axis=1) > 0]
    return float(iou.mean()), np.round(iou, 2).tolist()
