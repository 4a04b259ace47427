"""Running a model over images of any size: reflection padding to the model's stride, overlapping
tiles blended with pyramid weights for images larger than the tile, and batching same-size inputs
into model calls bounded in images and pixels (:func:`predict_probabilities`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from segops.inference.options import PredictOptions


def reflect_pad(image: np.ndarray, multiple: int, min_hw: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Pad (H, W, 3) at the bottom/right by reflection to a multiple of ``multiple`` (and >= min_hw).

    Reflection (not zeros) keeps the padded border looking like image content, so the model's
    receptive field near the border sees plausible context; the padding is cropped away after.
    """
    h, w = image.shape[:2]
    th = math.ceil(max(h, min_hw[0]) / multiple) * multiple
    tw = math.ceil(max(w, min_hw[1]) / multiple) * multiple
    if (th, tw) == (h, w):
        return image
    # np.pad's reflect cannot pad by more than the size - 1 in one go; symmetric-repeat instead
    while image.shape[0] < th or image.shape[1] < tw:
        ph = min(th - image.shape[0], image.shape[0] - 1) if image.shape[0] > 1 else th - image.shape[0]
        pw = min(tw - image.shape[1], image.shape[1] - 1) if image.shape[1] > 1 else tw - image.shape[1]
        mode = "reflect" if image.shape[0] > 1 and image.shape[1] > 1 else "edge"
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)
    return image


def tile_windows(height: int, width: int, tile: tuple[int, int], overlap: int) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering (height, width); neighbours overlap by >= ``overlap``."""

    def starts(size: int, t: int) -> list[int]:
        if size <= t:
            return [0]
        step = max(1, t - overlap)
        n = math.ceil((size - t) / step) + 1
        return sorted({round(i * (size - t) / (n - 1)) for i in range(n)})

    return [(y, x) for y in starts(height, tile[0]) for x in starts(width, tile[1])]


def pyramid_weights(th: int, tw: int) -> np.ndarray:
    wy = np.minimum(np.arange(th) + 1, th - np.arange(th)).astype(np.float32)
    wx = np.minimum(np.arange(tw) + 1, tw - np.arange(tw)).astype(np.float32)
    return np.minimum.outer(wy, wx)


def predict_probabilities(
    model: Any, images: Sequence[np.ndarray], stride: int, options: PredictOptions
) -> list[np.ndarray]:
    """Softmax probabilities (H, W, C) float32 for each RGB image, any size.

    Images no larger than the tile are reflection-padded to a multiple of ``stride`` and run
    whole; larger ones are cut into overlapping tiles (tile sides rounded up to the stride) and
    blended with pyramid weights. Inputs of the same padded size share model calls, up to
    ``options.batch_size`` images and ``options.max_batch_pixels`` pixels per call.
    """
    tile, overlap = options.tile, options.tile_overlap
    max_batch_images, max_batch_pixels = options.batch_size, options.max_batch_pixels
    if tile is not None:
        tile = (math.ceil(tile[0] / stride) * stride, math.ceil(tile[1] / stride) * stride)
    # jobs: (image index, y, x, h, w, padded array)
    jobs: list[tuple[int, int, int, int, int, np.ndarray]] = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if tile is None or (h <= tile[0] and w <= tile[1]):
            jobs.append((i, 0, 0, h, w, reflect_pad(img, stride)))
            continue
        padded = reflect_pad(img, stride, min_hw=tile)  # a side smaller than the tile
        for y, x in tile_windows(padded.shape[0], padded.shape[1], tile, overlap):
            jobs.append((i, y, x, tile[0], tile[1], padded[y : y + tile[0], x : x + tile[1]]))
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for j, job in enumerate(jobs):
        by_shape[job[5].shape].append(j)
    outputs: list[np.ndarray | None] = [None] * len(jobs)
    for shape, idxs in by_shape.items():
        per_call = max(1, min(max_batch_images, max_batch_pixels // (shape[0] * shape[1])))
        for start in range(0, len(idxs), per_call):
            chunk = idxs[start : start + per_call]
            probs = model.predict(np.stack([jobs[j][5] for j in chunk]))
            for j, p in zip(chunk, probs, strict=True):
                outputs[j] = p
    results: list[np.ndarray] = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        mine = [j for j, job in enumerate(jobs) if job[0] == i]
        if len(mine) == 1 and jobs[mine[0]][1:3] == (0, 0) and jobs[mine[0]][3:5] == (h, w):
            results.append(np.ascontiguousarray(outputs[mine[0]][:h, :w], dtype=np.float32))
            continue
        num_classes = outputs[mine[0]].shape[-1]
        ph = max(jobs[j][1] + jobs[j][3] for j in mine)
        pw = max(jobs[j][2] + jobs[j][4] for j in mine)
        acc = np.zeros((ph, pw, num_classes), np.float32)
        wsum = np.zeros((ph, pw, 1), np.float32)
        weights = pyramid_weights(tile[0], tile[1])[..., None]  # type: ignore[index]
        for j in mine:
            _, y, x, th, tw, _ = jobs[j]
            acc[y : y + th, x : x + tw] += outputs[j] * weights
            wsum[y : y + th, x : x + tw] += weights
            outputs[j] = None
        acc /= wsum
        results.append(np.ascontiguousarray(acc[:h, :w]))
    return results
