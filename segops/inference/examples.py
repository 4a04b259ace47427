"""One image on its way through inference: reading and validating it and its ground truth
(:func:`load_example`, raising BadInput with a reason), and the records passed between stages.

The decoders (OpenCV, libpng, libjpeg) run in the isolated helper process of
:mod:`segops.core.isolation`: a file that crashes one costs that image only. A ground truth
that cannot be used (unreadable, wrong size, unknown label ids) does not cost the image: it gets
its masks and a row without metrics, and the label problem is reported as ``label_error``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from segops.core import fs, imageio, isolation, labels
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


def decode_pair(image: bytes, label: bytes | None, max_pixels: int) -> tuple[np.ndarray, np.ndarray | str | None]:
    """(RGB, labelIds or the reason the label PNG is unusable, or None): every native decode of
    one input, so it runs as one isolated call."""
    rgb = imageio.decode_photo(image, max_pixels)
    if label is None:
        return rgb, None
    try:
        return rgb, imageio.decode_label_png(label, max_pixels)
    except imageio.BadInput as exc:
        return rgb, exc.reason


def _label_problem(label_ids: np.ndarray, rgb: np.ndarray) -> str | None:
    if label_ids.shape != rgb.shape[:2]:
        return f"is {label_ids.shape[1]}x{label_ids.shape[0]}, the image is {rgb.shape[1]}x{rgb.shape[0]}"
    unknown = labels.unknown_label_ids(label_ids)
    return f"has unknown label ids {unknown[:10]}" if unknown else None


def load_example(item: WorkItem, max_pixels: int, isolate: bool = True) -> ImageExample:
    """Read and validate one image (+ ground truth); raises BadInput with a reason, OSError when
    the image cannot be read, isolation.NativeCrash when a decoder crashed on it."""
    data = fs.read_bytes(item.path)
    imageio.check_photo_header(data, max_pixels)  # bombs refused here, before any decoder runs
    label_data, label_error = None, None
    if item.label_path:
        try:
            label_data = fs.read_bytes(item.label_path)
        except OSError as exc:
            label_error = f"unreadable ({exc})"
    if isolate:
        rgb, label = isolation.call("decode", item.path, decode_pair, data, label_data, max_pixels)
    else:
        rgb, label = decode_pair(data, label_data, max_pixels)
    gt = None
    if isinstance(label, str):
        label_error = label
    elif label is not None:
        label_error = _label_problem(label, rgb)
        gt = None if label_error else labels.to_train_ids(label)
    return ImageExample(item, rgb, gt, label_error and f"ground truth {item.label_path}: {label_error}")
