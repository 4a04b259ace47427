"""Scoring helpers the bench/check_*.py scripts share: the (image, trainIds) pairs of a split of a
Cityscapes-layout dataset, a confusion matrix accumulated from label maps, the mIoU over the
classes present in the ground truth (CamVid has 11 of Cityscapes' 19), a Keras model scored on a
split, and its batch-norm layers (what the weight-averaging and test-time checks change)."""

from __future__ import annotations

import glob
import os
import time
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


def score_model(model, dataset: str, split: str, n: int, stride: int, transform=None) -> tuple[float, list[float], float]:
    """(mIoU, per-class IoU, the model's CPU seconds) of a Keras ``model`` over ``split``, each
    image reflect-padded to ``stride`` and, with ``transform``, mapped (float RGB) first. The model
    is called eagerly, so a layer whose ``call`` a check replaced between calls is honoured."""
    from segops.inference.tiling import reflect_pad

    confusion = np.zeros((n, n), np.int64)
    cpu = 0.0
    for _, rgb, truth in split_pairs(dataset, split):
        h, w = truth.shape
        image = rgb.astype(np.float32) if transform is None else transform(rgb.astype(np.float32))
        start = time.process_time()
        logits = np.asarray(model(reflect_pad(image, stride)[None], training=False))[0]
        cpu += time.process_time() - start
        add_confusion(confusion, truth, logits[:h, :w].argmax(-1))
    return *present_iou(confusion), cpu


def batch_norm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested encoders included."""
    import keras

    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]  # fmt: skip
