"""The values passed between the stages of ``segops infer``: a decoded :class:`ImageExample`,
its :class:`Prediction` (probabilities from the model stage) and what survives the CRF stage,
:class:`Segmented` (masks and numbers). Their own module, apart from the decoding that makes the
first of them (:mod:`segops.inference.decoding`), so every stage can import them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from segops.inference.discovery import WorkItem
from segops.inference.previous import PreviousMask


class ImageExample(NamedTuple):
    """A decoded image (ground truth as trainIds, or None)."""

    item: WorkItem
    rgb: np.ndarray
    gt: np.ndarray | None
    label_error: str | None = None  # why the ground truth at item.label_path was not used


class Prediction(NamedTuple):
    example: ImageExample
    probabilities: np.ndarray  # (H, W, C) float32
    inference_ms: float  # this image's share of its model calls
    error: str | None = None  # set (probabilities None) when the model failed on this image alone


@dataclass
class Segmented:
    """What survives the CRF stage: the masks and the numbers, not the probabilities."""

    example: ImageExample
    pred_before: np.ndarray
    pred_after: np.ndarray | None
    mean_confidence: float
    low_confidence_fraction: float
    inference_ms: float
    crf_ms: float | None
    # the mask the written one replaced (set by the mask writer; segops.inference.previous)
    previous: PreviousMask | None = None
