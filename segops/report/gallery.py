"""The gallery's images: which rows to show (the best and worst by per-image mIoU,
:func:`select_gallery`) and loading each one (:func:`load_gallery`): the input and its ground
truth through infer's own loader, the mask infer wrote, and the model's argmax before the CRF.

Infer keeps only the final (CRF) masks on disk, so the pre-CRF prediction is recomputed for the
few gallery images by the run's own predictor (:func:`make_predictor`: same export, same tiling
and batching, rebuilt from the infer manifest), and scored again next to the table's number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segops.core import fs, imageio, metrics
from segops.core.formatting import is_missing
from segops.report.data import RunData

if TYPE_CHECKING:
    from segops.inference.model import Predictor

DEFAULT_GALLERY_SIZE = 3  # images in each of the best and worst galleries
MAX_GALLERY_SIZE = 50


@dataclass
class GalleryItem:
    row: dict[str, Any]
    image: np.ndarray | None = None
    gt: np.ndarray | None = None  # trainIds
    pred: np.ndarray | None = None  # model argmax (recomputed), trainIds
    crf: np.ndarray | None = None  # the mask infer wrote, trainIds
    pred_miou: float | None = None  # of ``pred``: should equal row["mean_iou_before"]
    mask_miou: float | None = None  # of ``crf``: should equal row["mean_iou_after"] (or _before)
    problems: list[str] = field(default_factory=list)


def score_of(row: dict[str, Any]) -> float | None:
    """Gallery ranking: per-image mIoU of the final masks (after the CRF when there is one)."""
    value = row.get("mean_iou_after") if row.get("crf") else row.get("mean_iou_before")
    return None if is_missing(value) else float(value)


def select_gallery(rows: list[dict[str, Any]], k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``k`` best and ``k`` worst labelled images (disjoint; ties by path, so deterministic)."""
    scored = sorted((r for r in rows if score_of(r) is not None), key=lambda r: (-score_of(r), r["rel_path"]))
    n_best = min(k, (len(scored) + 1) // 2)  # fewer than 2k images: split them between the two
    best = scored[:n_best]
    worst = [r for r in reversed(scored[n_best:])][:k]
    return best, worst


def _miou(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> float | None:
    value = metrics.mean_iou(metrics.confusion_matrix(gt, pred, num_classes))
    return None if is_missing(value) else value


def make_predictor(data: RunData) -> Predictor:
    """The run's own predictions (its recorded tiling and batching) for the gallery."""
    from segops.inference.model import Predictor
    from segops.inference.options import PredictOptions

    manifest = data.infer_manifest or {}
    candidates = [c for c in (data.paths.model, manifest.get("model_dir")) if c]
    return Predictor(data.model_id, candidates, PredictOptions.from_record(manifest.get("options")))


def load_gallery(data: RunData, rows: list[dict[str, Any]], predictor: Predictor | None) -> list[GalleryItem]:
    from segops.inference.decoding import load_example
    from segops.inference.discovery import WorkItem
    from segops.inference.masks import mask_paths

    max_pixels = int(((data.infer_manifest or {}).get("options") or {}).get("max_pixels", imageio.DEFAULT_MAX_PIXELS))
    items = []
    for row in rows:
        item = GalleryItem(row)
        work = WorkItem(row["path"], row["rel_path"], row["label_path"])
        try:  # infer's own loader: same checks (size match, known label ids) as the run had
            example = load_example(work, max_pixels, label_set=data.label_set)
            item.image, item.gt = example.rgb, example.gt
        except (OSError, imageio.BadInput) as exc:
            item.problems.append(f"cannot read the image or its ground truth: {exc}")
            items.append(item)
            continue
        mask_path = mask_paths(data.paths.infer, work)["trainIds"]
        try:
            item.crf = imageio.decode_label_png(fs.read_bytes(mask_path))
            item.mask_miou = _miou(item.gt, item.crf, data.label_set.num_classes)
        except (OSError, imageio.BadInput) as exc:
            item.problems.append(f"mask {mask_path} unreadable: {exc}")
        if predictor is not None and row.get("crf"):
            item.pred = predictor(item.image)
            if item.pred is not None:
                item.pred_miou = _miou(item.gt, item.pred, data.label_set.num_classes)
            else:
                item.problems.append(f"prediction before the CRF not shown: {predictor.reason}")
        if not row.get("crf"):  # --no-crf run: the mask on disk *is* the prediction
            item.pred, item.pred_miou, item.crf = item.crf, item.mask_miou, None
        items.append(item)
    return items
