"""U-Net per-pixel weight maps: object instances (from instanceIds, or connected components of
the thing classes), the sparse border term, and the final float16 map.

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` with ``w_c`` the class weight
(:mod:`segops.prepare.class_weights`) and ``d1``/``d2`` the distances to the nearest and
second-nearest object instance (the U-Net paper). The border term is computed once per image
without the class weights (:func:`unet_border_term`), kept sparse, and added to the class-weight
lookup later (:func:`weight_map`). Ignored pixels (trainId 255) get weight 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from segops.core.labels import IGNORE_ID, LABELS

#: Border terms below this are dropped; it bounds the search radius around each instance.
BORDER_TOLERANCE = 1e-4

#: labelIds of "thing" classes, whose connected components stand in for instances when no
#: instanceIds image is available.
THING_LABEL_IDS: tuple[int, ...] = tuple(lb.id for lb in LABELS if lb.has_instances and lb.id >= 0)


# --- instances -------------------------------------------------------------------------------


class Instances(NamedTuple):
    """Object instances of one image: a label map (int32, 0 = none, 1..K) and their boxes."""

    labels: np.ndarray
    boxes: np.ndarray  # (K, 4) int: row0, row1, col0, col1 (inclusive) of instance k+1

    @property
    def count(self) -> int:
        return len(self.boxes)


def _boxes(rows: np.ndarray, cols: np.ndarray, lab: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Bounding boxes of labels 1..k from their pixels' coordinates: two bincounts, no sort."""
    h, w = shape
    lab0 = lab.astype(np.int64) - 1
    row_hits = np.bincount(lab0 * h + rows, minlength=k * h).reshape(k, h) > 0
    col_hits = np.bincount(lab0 * w + cols, minlength=k * w).reshape(k, w) > 0
    return np.stack(
        [
            row_hits.argmax(axis=1),
            h - 1 - row_hits[:, ::-1].argmax(axis=1),
            col_hits.argmax(axis=1),
            w - 1 - col_hits[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    )


def instances_from_map(labels: np.ndarray) -> Instances:
    """Instances from a label map already numbered 0 (none), 1..K."""
    rows, cols = np.nonzero(labels)
    k = int(labels.max()) if rows.size else 0
    boxes = _boxes(rows, cols, labels[rows, cols], k, labels.shape) if k else np.zeros((0, 4), np.int64)
    return Instances(labels.astype(np.int32, copy=False), boxes)


def instances_from_ids(instance_ids: np.ndarray) -> Instances:
    """Cityscapes instanceIds (``labelId*1000 + k`` for instances) -> instances numbered 1..K.

    Values below 1000 are stuff or crowd regions ("car group"), not instances.
    """
    ids = np.asarray(instance_ids)
    out = np.zeros(ids.shape, dtype=np.int32)
    rows, cols = np.nonzero(ids >= 1000)  # one scan of the image; the rest is per instance pixel
    if rows.size == 0:
        return Instances(out, np.zeros((0, 4), np.int64))
    values = ids[rows, cols].astype(np.int64) - 1000
    if values.max() < (1 << 22):  # the usual case: dense ids, a bincount beats a sort
        present = np.flatnonzero(np.bincount(values))
        lut = np.zeros(int(present[-1]) + 1, dtype=np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        lab = lut[values]
    else:
        present, inverse = np.unique(values, return_inverse=True)
        lab = inverse.astype(np.int32) + 1
    out[rows, cols] = lab
    return Instances(out, _boxes(rows, cols, lab, present.size, ids.shape))


def instances_from_label(label_ids: np.ndarray, thing_ids: tuple[int, ...] = THING_LABEL_IDS) -> Instances:
    """Connected components (8-connected) of each thing class (``thing_ids``: the label set's
    labelIds with instances) in a labelIds map, numbered 1..K."""
    out = np.zeros(label_ids.shape, dtype=np.int32)
    present = np.bincount(label_ids.ravel(), minlength=256) > 0
    boxes = []
    for lid in thing_ids:
        if not present[lid]:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(
            (label_ids == lid).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        if n > 1:
            sel = comp > 0
            out[sel] = comp[sel] + len(boxes)
            for x, y, w, h, _area in stats[1:]:
                boxes.append((y, y + h - 1, x, x + w - 1))
    return Instances(out, np.array(boxes, dtype=np.int64).reshape(-1, 4))


# --- U-Net border term -----------------------------------------------------------------------


class BorderTerm(NamedTuple):
    """Sparse U-Net border term, compact enough to travel between pipeline stages: the non-zero
    pixels as runs of consecutive flat indices, and their values in float16 (the precision the
    records store weight maps in). ~4x smaller than flat int32 indices with float32 values."""

    starts: np.ndarray  # int32: flat index of each run's first pixel, ascending
    lengths: np.ndarray  # int32: pixels in each run
    value: np.ndarray  # float16, run after run
    height: int
    width: int

    @classmethod
    def from_pixels(cls, index: np.ndarray, value: np.ndarray, height: int, width: int) -> BorderTerm:
        """From ascending flat indices and their values."""
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        bounds = np.concatenate(([0], breaks, [index.size])) if index.size else np.zeros(1, np.int64)
        starts = index[bounds[:-1]].astype(np.int32)
        return cls(starts, np.diff(bounds).astype(np.int32), value.astype(np.float16), height, width)

    def flat_index(self) -> np.ndarray:
        """The flat pixel index of every value (int64, ascending)."""
        offsets = np.cumsum(self.lengths) - self.lengths
        return np.arange(self.value.size) + np.repeat(self.starts - offsets, self.lengths)

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.height * self.width, dtype=np.float32)
        out[self.flat_index()] = self.value
        return out.reshape(self.height, self.width)


def border_radius(w0: float, sigma: float, tol: float = BORDER_TOLERANCE) -> float:
    """Largest ``d1 + d2`` whose term ``w0*exp(-(d1+d2)^2/(2 sigma^2))`` is still >= tol."""
    if w0 <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def unet_border_term(
    instances: Instances | np.ndarray, w0: float, sigma: float, tol: float = BORDER_TOLERANCE
) -> BorderTerm:
    """``w0 * exp(-(d1+d2)^2 / (2 sigma^2))`` for instances (or a map numbered 0 = none, 1..K).

    One exact Euclidean distance transform per instance, restricted to the instance's bounding
    box grown by the radius R beyond which the term is below ``tol``: a pixel farther than R
    from an instance cannot have that instance among its two nearest with ``d1 + d2 <= R``.
    Pixels with fewer than two instances within R get no term (``d2 = inf``).
    """
    if not isinstance(instances, Instances):
        instances = instances_from_map(instances)
    labels, boxes = instances
    h, w = labels.shape
    k = len(boxes)
    radius = border_radius(w0, sigma, tol)
    empty = BorderTerm.from_pixels(np.zeros(0, np.int64), np.zeros(0, np.float32), h, w)
    if k < 2 or radius <= 0:
        return empty
    pad = int(math.ceil(radius))
    big = np.float32(radius + 1.0)  # "farther than R": enough, and keeps sums finite
    d1 = np.full((h, w), big, dtype=np.float32)
    d2 = np.full((h, w), big, dtype=np.float32)
    for label, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        r0, c0 = max(r0 - pad, 0), max(c0 - pad, 0)
        r1, c1 = min(r1 + pad + 1, h), min(c1 + pad + 1, w)
        outside = (labels[r0:r1, c0:c1] != label).astype(np.uint8)
        dist = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        win1, win2 = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]
        np.minimum(win2, np.maximum(win1, dist), out=win2)
        np.minimum(win1, dist, out=win1)
    index = np.flatnonzero(d2.ravel() <= radius)
    total = d1.ravel()[index] + d2.ravel()[index]
    keep = total <= radius
    index, total = index[keep], total[keep]
    value = (w0 * np.exp(-(total.astype(np.float64) ** 2) / (2.0 * sigma * sigma))).astype(np.float32)
    return BorderTerm.from_pixels(index, value, h, w)


def effective_sigma(sigma: float, height: int, reference_height: int | None) -> float:
    """sigma in pixels of this image: as given, or scaled by ``height / reference_height``."""
    return sigma if not reference_height else sigma * height / reference_height


def weight_map(train_ids: np.ndarray, lut: np.ndarray, border: BorderTerm | None) -> np.ndarray:
    """Per-pixel weights, float16 (H, W) as stored in records: class weight + border term, 0 on
    ignored pixels. Built in float16 directly (a LUT of float16 bit patterns; the sparse border
    pixels summed in float32 and rounded once): converting a whole float32 map costs more than
    everything else here."""
    lut = np.asarray(lut, dtype=np.float32)
    bits = lut.astype(np.float16).view(np.uint16)
    if train_ids.dtype == np.uint8:
        weights = cv2.LUT(train_ids, bits).view(np.float16)
    else:
        weights = bits[train_ids].view(np.float16)
    if border is not None and border.value.size:
        flat_index = border.flat_index()
        classes = train_ids.reshape(-1)[flat_index]
        labelled = classes != IGNORE_ID
        total = lut[classes[labelled]] + border.value[labelled].astype(np.float32)
        weights.reshape(-1)[flat_index[labelled]] = total.astype(np.float16)
    return weights
