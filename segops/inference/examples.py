"""One image on its way through inference: reading and validating it and its ground truth
(:func:`load_example`, raising BadInput with a reason), and the records passed between stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from segops.core import fs, imageio, labels
from segops.inference.discovery import WorkItem


class ImageExample(NamedTuple):
    """A decoded image (ground truth as trainIds, or None)."""

    item: WorkItem
    rgb: np.ndarray
    gt: np.ndarray | None


class Prediction(NamedTuple):
    example: ImageExample
    probabilities: np.ndarray  # (H, W, C) float32
    inference_ms: float  # this image's share of its model calls


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


def load_example(item: WorkItem, max_pixels: int) -> ImageExample:
    """Read and validate one image (+ ground truth); raises BadInput with a reason."""
    data = fs.read_bytes(item.path)
    height, width = imageio.image_size(data)  # header only: oversized images never get decoded
    imageio.check_pixels(height, width, max_pixels)
    rgb = imageio.decode_rgb_image(data, max_pixels)
    gt = None
    if item.label_path:
        try:
            label_ids = imageio.decode_label_png(fs.read_bytes(item.label_path), max_pixels)
        except OSError as exc:
            raise imageio.BadInput(f"ground truth {item.label_path} unreadable ({exc})") from exc
        except imageio.BadInput as exc:
            raise imageio.BadInput(f"ground truth {item.label_path}: {exc.reason}") from exc
        if label_ids.shape != rgb.shape[:2]:
            raise imageio.BadInput(
                f"ground truth {item.label_path} is {label_ids.shape[1]}x{label_ids.shape[0]}, "
                f"image is {rgb.shape[1]}x{rgb.shape[0]}"
            )
        unknown = labels.unknown_label_ids(label_ids)
        if unknown:
            raise imageio.BadInput(f"ground truth {item.label_path} has unknown label ids {unknown[:10]}")
        gt = labels.to_train_ids(label_ids)
    return ImageExample(item, rgb, gt)
