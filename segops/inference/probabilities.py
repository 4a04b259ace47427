"""Per-pixel class probabilities of an image too large to hold them all: :class:`TopK`, the
``TOP_K`` most probable classes per pixel as uint8 ids and float16 probabilities (9 bytes per
pixel instead of 76 for 19 float32 classes), and what tiling, the CRF and the masks read of it
(argmax, top probability, a class's plane, area downsampling, gathers)."""

from __future__ import annotations

import cv2
import numpy as np

TOP_K = 3  # classes kept per pixel of a tiled image
STRIP_PIXELS = 1 << 21  # full-resolution pixels per step when a TopK is area-downsampled


class TopK:
    """Per-pixel top-k class probabilities of an (H, W, C) map: ``ids`` uint8 and ``probs``
    float16, both (H, W, k), most probable first. Offers what the later stages read."""

    def __init__(self, height: int, width: int, num_classes: int, k: int = TOP_K) -> None:
        self.ids = np.zeros((height, width, k), np.uint8)
        self.probs = np.zeros((height, width, k), np.float16)
        self.num_classes = num_classes

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.ids.shape[:2], self.num_classes)

    @property
    def ndim(self) -> int:
        return 3

    def put(self, y: slice, x: slice, probs: np.ndarray) -> None:
        """Store the top k of ``probs`` (h, w, C) float32 (overwritten) at [y, x]."""
        for k in range(self.ids.shape[2]):
            top = probs.argmax(axis=2)[..., None]
            self.ids[y, x, k] = top[..., 0]
            self.probs[y, x, k] = np.take_along_axis(probs, top, axis=2)[..., 0]
            np.put_along_axis(probs, top, -1.0, axis=2)

    def argmax(self, axis: int = -1) -> np.ndarray:
        if axis not in (-1, 2):
            raise ValueError("TopK.argmax works over the class axis only")
        return self.ids[..., 0]

    def top(self) -> np.ndarray:
        return self.probs[..., 0]

    def classes(self) -> np.ndarray:
        """The class ids present (a strip at a time: ``np.unique`` of the whole map would copy
        and sort all of it)."""
        present = np.zeros(256, bool)
        rows = max(1, STRIP_PIXELS // self.ids.shape[1])
        for r in range(0, self.ids.shape[0], rows):
            present[np.unique(self.ids[r : r + rows])] = True
        return np.flatnonzero(present)

    def class_map(self, c: int, rows: slice = slice(None)) -> np.ndarray:
        """(H, W) float32 probability of class ``c`` (0 where it is not in the top k) over ``rows``."""
        ids, probs = self.ids[rows], self.probs[rows]
        out = np.zeros(ids.shape[:2], np.float32)
        hit = np.empty(ids.shape[:2], bool)
        part = np.empty(ids.shape[:2], np.float16)
        for k in range(ids.shape[2]):  # into reused buffers: no further full-size temporaries
            np.equal(ids[..., k], c, out=hit)
            np.multiply(probs[..., k], hit, out=part)
            out += part
        return out

    def area_downsample(self, c: int, h: int, w: int) -> np.ndarray:
        """:meth:`class_map` area-averaged to (h, w) (OpenCV ``INTER_AREA``). When h divides the
        height, a strip of rows at a time (the same numbers, at most ``STRIP_PIXELS`` at once)."""
        height, width = self.ids.shape[:2]
        if height % h:
            return cv2.resize(self.class_map(c), (w, h), interpolation=cv2.INTER_AREA)
        step = height // h
        cells = max(1, STRIP_PIXELS // (width * step))
        out = np.empty((h, w), np.float32)
        for r in range(0, h, cells):
            plane = self.class_map(c, slice(r * step, (r + cells) * step))
            out[r : r + cells] = cv2.resize(plane, (w, plane.shape[0] // step), interpolation=cv2.INTER_AREA)
        return out

    def gather(self, y: np.ndarray, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(n, len(classes)) float32 probabilities at pixels (y, x) of ``classes``."""
        column = np.full(256, -1, np.int64)
        column[classes] = np.arange(len(classes))
        out = np.zeros((len(y), len(classes)), np.float32)
        rows = np.arange(len(y))
        for k in range(self.ids.shape[2]):
            col = column[self.ids[y, x, k]]
            keep = col >= 0
            out[rows[keep], col[keep]] = self.probs[y, x, k][keep]
        return out
