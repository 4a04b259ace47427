"""Rasterising and finishing: the annotated polygons become labelIds, instanceIds and the gtFine
polygons document (pixel-centre rule, as cityscapesScripts rasterises them); every item is
painted, then texture, shading, sky gradient, blur, colour cast and sensor noise finish the image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from segops.core.labels import NAME_TO_LABEL
from segops.datasets.synth.palette import FINE_LUT, MID_LUT
from segops.datasets.synth.scene import Item

_SKY_ID = NAME_TO_LABEL["sky"].id
# Label rasterisation: sub-rows per pixel row (see render); fewer above Cityscapes' size, where
# boundary pixels are a smaller share and the sub-row canvases would take hundreds of MB.
_ROWS, _ROWS_LARGE, _LARGE = 9, 3, 1024 * 2048


def _clip(poly: np.ndarray, w: int, h: int) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to the image rectangle [0, w-1] x [0, h-1]."""
    out = poly
    for axis, bound, keep_below in ((0, 0.0, False), (0, w - 1.0, True), (1, 0.0, False), (1, h - 1.0, True)):
        if len(out) == 0:
            break
        inside = out[:, axis] <= bound if keep_below else out[:, axis] >= bound
        if inside.all():
            continue
        res = []
        n = len(out)
        for i in range(n):
            cur, nxt = out[i], out[(i + 1) % n]
            cin, nin = inside[i], inside[(i + 1) % n]
            if cin:
                res.append(cur)
            if cin != nin:
                t = (bound - cur[axis]) / (nxt[axis] - cur[axis])
                res.append(cur + t * (nxt - cur))
        out = np.array(res).reshape(-1, 2)
    return out


def _dedupe(pts: np.ndarray) -> np.ndarray:
    keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)
    return pts[keep] if keep.any() else pts[:1]


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label_ids: np.ndarray  # (H, W) uint8
    instance_ids: np.ndarray  # (H, W) uint16
    polygons: dict  # the gtFine polygons JSON document


def render(items: Sequence[Item], height: int, width: int, rng: np.random.Generator,
           keep_labels: Callable[[str], bool] | None = None) -> Rendered:
    """Rasterise the annotated polygons (labelIds, instanceIds, JSON) and paint the image.

    Labels for which ``keep_labels`` is false are painted but not annotated (the test split).
    """
    all_kept = keep_labels is None
    keep_labels = keep_labels or (lambda name: True)
    # Labels are rasterised on a grid with _ROWS rows per pixel row and sampled at the middle
    # row: fillPoly then marks pixels by where the polygon crosses their centre row (the rule
    # Pillow, hence cityscapesScripts, uses) instead of every pixel its outline touches.
    s = _ROWS if height * width <= _LARGE else _ROWS_LARGE
    mid = s // 2
    label = np.zeros((height * s, width), np.uint8)
    inst = np.zeros((height * s, width), np.uint16)
    # class of every painted object, annotated or not: it drives the texture
    visible = label if all_kept else np.zeros((height * s, width), np.uint8)
    canvas = np.zeros((height, width, 3), np.uint8)
    objects: list[dict] = []
    next_instance: dict[int, int] = {}
    for it in items:
        pts = _clip(np.asarray(it.points, np.float64), width, height) if not it.line else it.points
        if len(pts) < (2 if it.line else 3):
            continue
        color = tuple(int(round(c)) for c in it.color)
        if it.line:
            fixed = np.round(np.asarray(pts) * 16).astype(np.int64)
            if np.abs(fixed).max() > 2**28:
                continue  # a line through the camera plane: nothing useful to draw
            cv2.polylines(canvas, [fixed.astype(np.int32)], False, color, it.line, cv2.LINE_AA, 4)
            continue
        if it.label is None:
            cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], color, cv2.LINE_AA, 4)
            continue
        ipts = _dedupe(np.round(pts).astype(np.int32))
        if len(ipts) < 3:
            continue
        cv2.fillPoly(canvas, [ipts], color)
        rows = ipts * (1, s) + (0, mid)
        lab = NAME_TO_LABEL[it.label]
        if not keep_labels(it.label):
            cv2.fillPoly(visible, [rows], lab.id)
            continue
        cv2.fillPoly(label, [rows], lab.id)
        if lab.has_instances:
            k = next_instance.get(lab.id, 0)
            next_instance[lab.id] = k + 1
            cv2.fillPoly(inst, [rows], lab.id * 1000 + k)
        else:
            cv2.fillPoly(inst, [rows], lab.id)
        objects.append({"label": it.label, "polygon": ipts.tolist()})
    label, inst, visible = (np.ascontiguousarray(a[mid::s]) for a in (label, inst, visible))
    image = _finish(canvas, visible, rng)
    doc = {"imgHeight": height, "imgWidth": width, "objects": objects}
    return Rendered(image, label, inst, doc)


def _lowfreq(rng: np.random.Generator, height: int, width: int, cells_h: int, cells_w: int) -> np.ndarray:
    small = rng.standard_normal((max(2, cells_h), max(2, cells_w)), dtype=np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _finish(canvas: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture, shading, sky gradient, blur, colour cast and sensor noise.

    Per-pixel terms are built as single-channel fields first and applied to the three channels
    once: at 1024x2048 every full-colour float pass costs ~10 ms.
    """
    h, w = classes.shape
    fine = rng.standard_normal((h, w), dtype=np.float32)
    mid = _lowfreq(rng, h, w, h // 6, w // 6)
    add = FINE_LUT[classes] * fine
    add += MID_LUT[classes] * mid
    # sky: brighter towards the horizon, soft clouds
    sky = classes == _SKY_ID
    rows = np.linspace(-12, 22, h, dtype=np.float32)[:, None]
    clouds = np.maximum(_lowfreq(rng, h, w, 4, 8), 0) * np.float32(rng.uniform(5, 25))
    add += np.where(sky, rows + clouds, np.float32(0))
    # illumination: low-frequency shading, global gain and a colour cast
    shade = 1.0 + np.float32(rng.uniform(0.05, 0.15)) * _lowfreq(rng, h, w, 3, 6)
    gain = (rng.uniform(0.75, 1.2) * (1.0 + rng.uniform(-0.06, 0.06, 3))).astype(np.float32)
    img = canvas.astype(np.float32)
    img += add[:, :, None]
    img *= shade[:, :, None]
    img *= gain
    img = cv2.GaussianBlur(img, (0, 0), max(0.5, h / 512))
    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    noise *= np.float32(rng.uniform(1.5, 4.0))
    img += noise
    img += np.float32(0.5)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)
