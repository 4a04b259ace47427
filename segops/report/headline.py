"""The numbers of a run a person looks at first (:func:`headline`, also printed by `segops report`
and `segops demo` through :func:`format_headline`), the majority-class baseline they are compared
with, and the class shares of prepare's statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from segops.core import metrics
from segops.core.formatting import fmt_score
from segops.report.data import RunData


def majority_baseline(confusion: np.ndarray, majority: int) -> float:
    """Dataset mIoU of a constant prediction of class ``majority`` on the same ground truth.

    Built as the confusion matrix such a predictor would produce (every ground-truth pixel in
    column ``majority``) and scored with the same definitions as the model.
    """
    cm = np.zeros_like(confusion)
    cm[:, majority] = confusion.sum(axis=1)
    return metrics.mean_iou(cm)


def majority_class(data: RunData) -> tuple[int, str]:
    """The most frequent trainId of the training split (stats.json), else of the evaluated ground truth."""
    source = "ground truth of the evaluated images"
    counts = None
    splits = (data.stats or {}).get("splits", {})
    for split in ("train", *splits):
        if split in splits and sum(splits[split].get("pixel_counts", [])) > 0:
            counts, source = np.asarray(splits[split]["pixel_counts"]), f"{split} split"
            break
    stage = data.stage("before_crf")
    if counts is None and stage:
        counts = np.asarray(stage["confusion_matrix"]).sum(axis=1)
    return (int(np.argmax(counts)) if counts is not None else 0), source


def headline(data: RunData) -> dict[str, Any]:
    """The numbers a person looks at first (also printed by `segops report` and `segops demo`)."""
    before, after = data.stage("before_crf"), data.stage("after_crf")
    out: dict[str, Any] = {
        "model_id": data.model_id,
        "images": data.summary.get("images", 0),
        "labelled_images": data.summary.get("labelled_images", 0),
        "miou_before_crf": before["dataset_miou"] if before else None,
        "miou_after_crf": after["dataset_miou"] if after else None,
        "mean_per_image_miou_before_crf": before["mean_of_per_image_miou"] if before else None,
        "mean_per_image_miou_after_crf": after["mean_of_per_image_miou"] if after else None,
        "pixel_accuracy_before_crf": before["dataset_pixel_accuracy"] if before else None,
        "pixel_accuracy_after_crf": after["dataset_pixel_accuracy"] if after else None,
    }
    if before:
        m, source = majority_class(data)
        out["majority_class"] = data.label_set.class_names[m]
        out["majority_class_source"] = source
        out["majority_baseline_miou"] = majority_baseline(np.asarray(before["confusion_matrix"]), m)
    if data.history:
        best = max((r for r in data.history if r.get("val_mean_iou") is not None),
                   key=lambda r: r["val_mean_iou"], default=None)  # fmt: skip
        out["epochs_trained"] = data.history[-1]["epoch"]
        if best:
            out["best_epoch"], out["best_val_miou_training"] = best["epoch"], best["val_mean_iou"]
    return out


def format_headline(head: dict[str, Any], what: str = "mIoU") -> str:
    """A few lines for the terminal; ``what`` names the images, e.g. "val mIoU"."""
    lines = [f"model {head['model_id']}: {head['images']} image(s), {head['labelled_images']} with ground truth"]
    if head.get("miou_before_crf") is not None:
        lines.append(f"{what + ' (dataset)':<24}model {fmt_score(head['miou_before_crf'])}   "
                     f"+ CRF {fmt_score(head['miou_after_crf'])}")  # fmt: skip
        lines.append(f"{'mean per-image mIoU':<24}model {fmt_score(head['mean_per_image_miou_before_crf'])}   "
                     f"+ CRF {fmt_score(head['mean_per_image_miou_after_crf'])}")  # fmt: skip
        lines.append(f"majority-class baseline mIoU {fmt_score(head['majority_baseline_miou'])} "
                     f"(always '{head['majority_class']}')")  # fmt: skip
    if "best_val_miou_training" in head:
        lines.append(f"training: best val mIoU {fmt_score(head['best_val_miou_training'])} at epoch "
                     f"{head['best_epoch']} of {head['epochs_trained']}")  # fmt: skip
    return "\n".join(lines)


def source_split_share(data: RunData) -> np.ndarray | None:
    """Pixel share of every class in the split the class weights came from (stats.json), or None."""
    cw, stats = data.class_weights or {}, data.stats or {}
    split = stats.get("splits", {}).get(cw.get("source_split", "train"))
    if not split or not split.get("labelled_pixels"):
        return None
    return np.asarray(split["pixel_counts"], dtype=np.float64) / split["labelled_pixels"]
