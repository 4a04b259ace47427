"""The dataset summary of `segops infer` (summary.json), recomputed from the results table alone:
the Cityscapes dataset mIoU from the summed confusion matrix, per-class IoU and Dice, before and
after the CRF, and the mean of per-image scores (a different number, named so)."""

from __future__ import annotations

from typing import Any

import numpy as np

from segops.core import labels, metrics
from segops.core.formatting import finite_or_none
from segops.inference.table import read_metrics


def _class_dict(values: np.ndarray) -> dict[str, float | None]:
    return {name: finite_or_none(float(v)) for name, v in zip(labels.CLASS_NAMES, values, strict=True)}


def summarize(output: str, model_id: str) -> dict[str, Any]:
    """Dataset summary for ``model_id`` recomputed from metrics.parquet alone.

    ``dataset_*``: from the confusion matrix summed over labelled images (the Cityscapes
    definition; equals cityscapesScripts' evalPixelLevelSemanticLabeling on the labelId masks).
    ``mean_of_per_image_*``: the average of the per-image scores, a different number.
    """
    import pyarrow.compute as pc

    table = read_metrics(output)
    rows = table.filter(pc.equal(table.column("model_id"), model_id)) if table.num_rows else table
    n = rows.num_rows
    summary: dict[str, Any] = {
        "model_id": model_id,
        "images": n,
        "labelled_images": 0,
        "definitions": {
            "dataset_iou": "per class TP/(TP+FP+FN) from the confusion matrix summed over all labelled "
            "images, ground-truth ignore excluded (Cityscapes); dataset_miou is its mean over classes "
            "with a score",
            "mean_of_per_image_miou": "mean over labelled images of each image's mIoU (a different number)",
        },
        "before_crf": None,
        "after_crf": None,
    }
    if n == 0:
        return summary
    has_labels = np.asarray(rows.column("has_labels").to_pylist(), dtype=bool)
    crf = np.asarray(rows.column("crf").to_pylist(), dtype=bool)
    summary["labelled_images"] = int(has_labels.sum())
    summary["crf_images"] = int(crf.sum())
    conf = np.asarray(rows.column("mean_confidence").to_pylist(), dtype=np.float64)
    summary["mean_confidence"] = float(conf.mean())
    for stage, key in (("before", "before_crf"), ("after", "after_crf")):
        sel = has_labels & (crf if stage == "after" else True)
        if not sel.any():
            continue
        cms = rows.column(f"confusion_{stage}").to_pylist()
        total = np.zeros((labels.NUM_CLASSES, labels.NUM_CLASSES), np.int64)
        for cm, use in zip(cms, sel, strict=True):
            if use and cm is not None:
                total += np.asarray(cm, np.int64).reshape(labels.NUM_CLASSES, labels.NUM_CLASSES)
        per_image = np.asarray([v if v is not None else np.nan for v in rows.column(f"mean_iou_{stage}").to_pylist()])
        per_image = per_image[sel]
        iou, dice = metrics.iou_per_class(total), metrics.dice_per_class(total)
        summary[key] = {
            "images": int(sel.sum()),
            "dataset_miou": finite_or_none(metrics.nanmean_or_nan(iou)),
            "dataset_mdice": finite_or_none(metrics.nanmean_or_nan(dice)),
            "dataset_pixel_accuracy": finite_or_none(metrics.pixel_accuracy(total)),
            "dataset_iou": _class_dict(iou),
            "dataset_dice": _class_dict(dice),
            "mean_of_per_image_miou": finite_or_none(metrics.nanmean_or_nan(per_image)),
            "confusion_matrix": total.tolist(),
        }
    return summary
