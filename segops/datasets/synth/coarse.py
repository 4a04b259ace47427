"""Coarse annotations made from the fine ones, in the manner of Cityscapes' gtCoarse: each
region of one class is shrunk away from its boundaries, outlined by a simplified polygon (a few
vertices, like an annotator's quick clicks), and small regions are left out; everything not
covered stays void (labelId 0, ``unlabeled``).

What this models is the *coverage* of coarse annotation (void bands along every boundary, small
objects skipped, polygonal outlines), not annotators' mistakes: a polygon stays inside its fine
region, so every pixel the coarse labels give a class carries that class in the fine labels too
(up to a rasterisation pixel at a vertex). A pure function of the fine labelIds: writing it
consumes nothing of an image's random generator, so the fine files stay byte-identical.

Polygons are painted largest first; a region's holes (where another class sits inside it) are
painted right after it as ``unlabeled`` polygons, so anything nested inside, always smaller,
is painted later on top: the labelIds are the rasterisation of ``*_gtCoarse_polygons.json`` in
its order (OpenCV ``fillPoly`` on sub-rows, following Pillow's pixel-centre rule as the fine
labels do, so cityscapesScripts' ``json2labelImg`` reproduces nearly every pixel).
"""

from __future__ import annotations

import cv2
import numpy as np

from segops.core.labels import ID_TO_LABEL

UNLABELED = ID_TO_LABEL[0].name
#: Void band half-width per 128 px of the shorter image side (2 px at 256x512, 8 at 1024x2048).
BAND_PER_128_PX = 1
#: Regions whose shrunk outline covers fewer pixels than this share of the image are skipped.
MIN_AREA_SHARE = 1 / 2000
SUB_ROWS, SUB_ROWS_LARGE, SUB_ROWS_LIMIT = 9, 3, 1024 * 2048  # rasterising grid (as render.py)


def coarsen(label_ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """(coarse labelIds uint8 (H, W), the gtCoarse polygons document) of fine ``label_ids``."""
    h, w = label_ids.shape
    band = max(1, round(BAND_PER_128_PX * min(h, w) / 128))
    eps = float(band)  # Douglas-Peucker tolerance: a chord stays within eps of the outline
    margin = band + int(np.ceil(eps))  # shrink so the simplified polygon stays inside its region
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    min_area = max(4.0, MIN_AREA_SHARE * h * w)

    regions: list[tuple[float, int, int, int, np.ndarray, list[np.ndarray]]] = []
    for label_id in np.unique(label_ids):
        if label_id == 0:
            continue
        shrunk = cv2.erode((label_ids == label_id).astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE)
        contours, hierarchy = cv2.findContours(shrunk, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hierarchy is None:
            continue
        for i, contour in enumerate(contours):
            if hierarchy[0][i][3] != -1:  # a hole: handled with its outer contour
                continue
            area = cv2.contourArea(contour)
            outline = cv2.approxPolyDP(contour, eps, True).reshape(-1, 2)
            if area < min_area or len(outline) < 3:
                continue
            holes = []
            child = hierarchy[0][i][2]
            while child != -1:
                holes.append(_hole_polygon(contours[child], eps))
                child = hierarchy[0][child][0]
            x, y = (int(v) for v in contour[:, 0].min(axis=0))
            regions.append((area, int(label_id), y, x, outline, holes))

    regions.sort(key=lambda r: (-r[0], r[1], r[2], r[3]))
    # Rasterised as the fine labels are (segops.datasets.synth.render): on a grid of `rows` sub-rows
    # per pixel row, sampled at the middle one, i.e. Pillow's (cityscapesScripts') pixel-centre rule.
    rows = SUB_ROWS if h * w <= SUB_ROWS_LIMIT else SUB_ROWS_LARGE
    canvas = np.zeros((h * rows, w), np.uint8)
    objects: list[dict] = []

    def paint(poly: np.ndarray, value: int) -> None:
        cv2.fillPoly(canvas, [(poly * (1, rows) + (0, rows // 2)).astype(np.int32)], value)

    for _, label_id, _, _, outline, holes in regions:
        paint(outline, int(label_id))
        objects.append({"label": ID_TO_LABEL[label_id].name, "polygon": outline.tolist()})
        for hole in holes:
            paint(hole, 0)
            objects.append({"label": UNLABELED, "polygon": hole.tolist()})
    coarse = np.ascontiguousarray(canvas[rows // 2 :: rows])
    return coarse, {"imgHeight": h, "imgWidth": w, "objects": objects}


def _hole_polygon(contour: np.ndarray, eps: float) -> np.ndarray:
    """A hole's polygon: simplified like an outline, or its bounding box when that leaves fewer
    than three vertices (a hole is never skipped: whatever sits in it is another class)."""
    poly = cv2.approxPolyDP(contour, eps, True).reshape(-1, 2)
    if len(poly) >= 3:
        return poly
    x, y, bw, bh = cv2.boundingRect(contour)
    return np.array([[x, y], [x + bw - 1, y], [x + bw - 1, y + bh - 1], [x, y + bh - 1]])
