"""Running a model over images of any size: reflection padding to the model's stride, whole-image
model calls batched by size and bounded in images and pixels, and overlapping tiles for images
larger than the tile (:func:`predict_probabilities`).

Memory is bounded for any image size: a tiled image never holds its full (H, W, 19) float32
probabilities (2.5 GB for 4096x8192). Each pixel takes the probabilities of the tile it lies most
centrally in (the tile boundaries sit in the middle of the overlaps, so every pixel has at least
``overlap / 2`` pixels of context from its tile), and they are kept as :class:`TopK`: the
``TOP_K`` most probable classes per pixel, as uint8 ids and float16 probabilities (9 bytes per
pixel instead of 76). Argmax and top probability are exact; the CRF treats the other classes'
probability as 0 (clipped to 1e-5 like every probability)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segops.inference.probabilities import TopK

if TYPE_CHECKING:
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


def axis_starts(size: int, t: int, overlap: int) -> list[int]:
    """Starts of windows of length ``t`` covering ``size``; neighbours overlap by >= ``overlap``."""
    if size <= t:
        return [0]
    step = max(1, t - overlap)
    n = math.ceil((size - t) / step) + 1
    return sorted({round(i * (size - t) / (n - 1)) for i in range(n)})


def tile_windows(height: int, width: int, tile: tuple[int, int], overlap: int) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering (height, width); neighbours overlap by >= ``overlap``."""
    return [(y, x) for y in axis_starts(height, tile[0], overlap) for x in axis_starts(width, tile[1], overlap)]


def owned_spans(starts: list[int], t: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) of each window that it owns: split at the middle of each overlap, clipped to ``size``."""
    cuts = [0, *((b + a + t) // 2 for a, b in zip(starts, starts[1:], strict=False)), max(size, starts[-1] + t)]
    return [(min(lo, size), min(hi, size)) for lo, hi in zip(cuts, cuts[1:], strict=False)]


class FlipAveraged:
    """Horizontal-flip test-time augmentation around a model: each call runs the images and
    their mirror images in one batch and returns the mean of the two probability maps (the
    mirror's flipped back), so everything downstream (tiles, TopK, the CRF) sees one map. Where
    the mean ties, the tie breaks as the image alone would (:func:`break_ties_like`)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, batch: np.ndarray) -> np.ndarray:
        probs = self.model.predict(np.concatenate([batch, batch[:, :, ::-1]]))
        n = len(batch)
        return break_ties_like((probs[:n] + probs[n:, :, ::-1]) * np.float32(0.5), probs[:n])


def break_ties_like(mean: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """``mean`` [..., C] probabilities where the top classes tie exactly (a binary model's 0.6
    and 0.4 mirrored give 0.5 and 0.5) raised by one float step at the tied class that ``plain``
    (the prediction without TTA) ranks highest: the argmax then picks what the run without TTA
    picks, not the lowest class index. Elsewhere ``mean`` unchanged."""
    tied = mean == mean.max(axis=-1, keepdims=True)
    at = tied.sum(axis=-1) > 1
    if not at.any():
        return mean
    rows = mean[at]
    winner = np.where(tied[at], plain[at], -np.inf).argmax(axis=-1)
    pick = (np.arange(len(rows)), winner)
    rows[pick] = np.nextafter(rows[pick], np.float32(2))
    mean[at] = rows
    return mean


def _predict_tiled(model: Any, img: np.ndarray, stride: int, tile: tuple[int, int], overlap: int, per_call: int) -> TopK:
    h, w = img.shape[:2]
    padded = reflect_pad(img, stride, min_hw=tile)
    ys, xs = axis_starts(padded.shape[0], tile[0], overlap), axis_starts(padded.shape[1], tile[1], overlap)
    windows = [(y, x, ylo, yhi, xlo, xhi)
               for y, (ylo, yhi) in zip(ys, owned_spans(ys, tile[0], h), strict=True) if yhi > ylo
               for x, (xlo, xhi) in zip(xs, owned_spans(xs, tile[1], w), strict=True) if xhi > xlo]  # fmt: skip
    out: TopK | None = None
    for start in range(0, len(windows), per_call):
        chunk = windows[start : start + per_call]
        probs = model.predict(np.stack([padded[y : y + tile[0], x : x + tile[1]] for y, x, *_ in chunk]))
        out = out or TopK(h, w, probs.shape[-1])
        for p, (y, x, ylo, yhi, xlo, xhi) in zip(probs, chunk, strict=True):
            out.put(slice(ylo, yhi), slice(xlo, xhi), p[ylo - y : yhi - y, xlo - x : xhi - x])
        del probs, p  # before the next call: one call's output (160 MB per tile) alive at a time
    assert out is not None
    return out


def predict_probabilities(
    model: Any, images: Sequence[np.ndarray], stride: int, options: PredictOptions
) -> list[np.ndarray | TopK]:
    """Softmax probabilities for each RGB image, any size: (H, W, C) float32, or :class:`TopK`
    for an image larger than the tile.

    Images no larger than the tile are reflection-padded to a multiple of ``stride`` and run
    whole; inputs of the same padded size share model calls, up to ``options.batch_size``
    images and ``options.max_batch_pixels`` pixels per call. Larger ones are cut into
    overlapping tiles (sides rounded up to the stride), batched under the same bounds, each
    pixel taken from the tile it is most central in (module docstring). ``options.tta ==
    "flip"`` averages each call's probabilities with those of the mirrored inputs
    (:class:`FlipAveraged`); the bounds then count both copies (a call still holds at least one
    image and its mirror).
    """
    tile, overlap = options.tile, options.tile_overlap
    max_batch_images, max_batch_pixels = options.batch_size, options.max_batch_pixels
    if options.tta == "flip":  # two images per input in every call: the same bound on pixels per call
        model, max_batch_images, max_batch_pixels = FlipAveraged(model), max(1, max_batch_images // 2), max_batch_pixels // 2
    if tile is not None:
        tile = (math.ceil(tile[0] / stride) * stride, math.ceil(tile[1] / stride) * stride)
    results: list[np.ndarray | TopK | None] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if tile is None or (h <= tile[0] and w <= tile[1]):
            padded = reflect_pad(img, stride)
            by_shape[padded.shape].append((i, padded))
        else:
            per_call = max(1, min(max_batch_images, max_batch_pixels // (tile[0] * tile[1])))
            results[i] = _predict_tiled(model, img, stride, tile, overlap, per_call)
    for shape, jobs in by_shape.items():
        per_call = max(1, min(max_batch_images, max_batch_pixels // (shape[0] * shape[1])))
        for start in range(0, len(jobs), per_call):
            chunk = jobs[start : start + per_call]
            probs = model.predict(np.stack([padded for _, padded in chunk]))
            for (i, _), p in zip(chunk, probs, strict=True):
                h, w = images[i].shape[:2]
                results[i] = np.ascontiguousarray(p[:h, :w], dtype=np.float32)
    return results  # type: ignore[return-value]
