"""The dataset summary of `segops infer` (summary.json) as a streaming aggregation over the results
table: record batches of a few columns are folded into running totals (confusion matrices,
counts, sums), so driver memory does not grow with the number of rows. It holds the Cityscapes
dataset mIoU from the summed confusion matrix, per-class IoU and Dice before and after the CRF,
and the mean of per-image scores (a different number, named so)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segops.core import metrics
from segops.core.formatting import finite_or_none
from segops.core.label_sets import LabelSet, cityscapes

SCAN_BATCH_ROWS = 4096  # ~12 MB of confusion matrices per batch
STAGE_KEYS = (("before", "before_crf"), ("after", "after_crf"))
SUMMARY_COLUMNS = ("has_labels", "crf", "mean_confidence", "mean_iou_before", "mean_iou_after",
                   "confusion_before", "confusion_after")  # fmt: skip
DEFINITIONS = {
    "dataset_iou": "per class TP/(TP+FP+FN) from the confusion matrix summed over all labelled "
    "images, ground-truth ignore excluded (Cityscapes); dataset_miou is its mean over classes "
    "with a score",
    "mean_of_per_image_miou": "mean over labelled images of each image's mIoU (a different number)",
}


def _zeros(num_classes: int) -> np.ndarray:
    return np.zeros((num_classes, num_classes), np.int64)


@dataclass
class StageTotals:
    num_classes: int
    images: int = 0
    confusion: np.ndarray = field(init=False)
    per_image_miou_sum: float = 0.0
    per_image_miou_count: int = 0

    def __post_init__(self) -> None:
        self.confusion = _zeros(self.num_classes)


@dataclass
class Totals:
    """Running totals of one model's rows (``num_classes``: the table's label set's);
    :meth:`add_batch` folds in a pyarrow RecordBatch."""

    num_classes: int = cityscapes().num_classes
    images: int = 0
    labelled_images: int = 0
    crf_images: int = 0
    confidence_sum: float = 0.0
    stages: dict[str, StageTotals] = field(init=False)

    def __post_init__(self) -> None:
        self.stages = {s: StageTotals(self.num_classes) for s, _ in STAGE_KEYS}

    def add_batch(self, batch: Any) -> None:
        has_labels = np.asarray(batch.column("has_labels").to_numpy(zero_copy_only=False), dtype=bool)
        crf = np.asarray(batch.column("crf").to_numpy(zero_copy_only=False), dtype=bool)
        self.images += batch.num_rows
        self.labelled_images += int(has_labels.sum())
        self.crf_images += int(crf.sum())
        self.confidence_sum += float(np.nansum(batch.column("mean_confidence").to_numpy(zero_copy_only=False)))
        for stage, _ in STAGE_KEYS:
            selected = has_labels & crf if stage == "after" else has_labels
            totals = self.stages[stage]
            totals.images += int(selected.sum())
            totals.confusion += _confusion_sum(batch.column(f"confusion_{stage}"), selected, self.num_classes)
            per_image = batch.column(f"mean_iou_{stage}").to_numpy(zero_copy_only=False).astype(np.float64)
            per_image = per_image[selected]
            per_image = per_image[~np.isnan(per_image)]
            totals.per_image_miou_sum += float(per_image.sum())
            totals.per_image_miou_count += int(per_image.size)


def _confusion_sum(column: Any, selected: np.ndarray, num_classes: int) -> np.ndarray:
    """Sum of the selected, non-null flattened CxC matrices of a list<int64> column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chosen = pc.filter(column, pc.and_(pa.array(selected), pc.is_valid(column)))
    if len(chosen) == 0:
        return _zeros(num_classes)
    values = pc.list_flatten(chosen).to_numpy(zero_copy_only=False).astype(np.int64)
    return values.reshape(-1, num_classes * num_classes).sum(axis=0).reshape(num_classes, num_classes)


def _class_dict(values: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float | None]:
    return {name: finite_or_none(float(v)) for name, v in zip(class_names, values, strict=True)}


def summary_from_totals(model_id: str, totals: Totals, label_set: LabelSet | None = None) -> dict[str, Any]:
    """summary.json of ``totals`` (class names from ``label_set``, Cityscapes when None; a
    non-Cityscapes summary names its label set)."""
    ls = label_set or cityscapes()
    summary: dict[str, Any] = {
        "model_id": model_id,
        "images": totals.images,
        "labelled_images": totals.labelled_images,
        "definitions": DEFINITIONS,
        "before_crf": None,
        "after_crf": None,
    }
    if not ls.is_default:
        summary["label_set"] = {"name": ls.name, "digest": ls.digest, "classes": list(ls.class_names)}
    if totals.images == 0:
        return summary
    summary["crf_images"] = totals.crf_images
    summary["mean_confidence"] = totals.confidence_sum / totals.images
    for stage, key in STAGE_KEYS:
        st = totals.stages[stage]
        if st.images == 0:
            continue
        iou, dice = metrics.iou_per_class(st.confusion), metrics.dice_per_class(st.confusion)
        per_image = st.per_image_miou_sum / st.per_image_miou_count if st.per_image_miou_count else None
        summary[key] = {
            "images": st.images,
            "dataset_miou": finite_or_none(metrics.nanmean_or_nan(iou)),
            "dataset_mdice": finite_or_none(metrics.nanmean_or_nan(dice)),
            "dataset_pixel_accuracy": finite_or_none(metrics.pixel_accuracy(st.confusion)),
            "dataset_iou": _class_dict(iou, ls.class_names),
            "dataset_dice": _class_dict(dice, ls.class_names),
            "mean_of_per_image_miou": finite_or_none(per_image),
            "confusion_matrix": st.confusion.tolist(),
        }
    return summary


def summarize_table(dt: Any, model_id: str) -> dict[str, Any]:
    """Summary of ``model_id``'s rows in a results table (``deltalake.DeltaTable``), one batch of
    :data:`SCAN_BATCH_ROWS` rows and :data:`SUMMARY_COLUMNS` at a time."""
    from segops.inference.table import model_filter, rows_dataset, table_label_set

    label_set = table_label_set(dt)
    totals = Totals(label_set.num_classes)
    dataset = rows_dataset(dt.file_uris(), label_set)
    for batch in dataset.to_batches(columns=list(SUMMARY_COLUMNS), filter=model_filter(model_id),
                                    batch_size=SCAN_BATCH_ROWS):  # fmt: skip
        if batch.num_rows:
            totals.add_batch(batch)
    return summary_from_totals(model_id, totals, label_set)


def summarize(output: str, model_id: str) -> dict[str, Any]:
    """Summary of ``model_id`` over the results table of infer output ``output`` (latest version)."""
    from segops.inference.table import TableError, open_table

    try:
        dt = open_table(output)
    except TableError:
        return summary_from_totals(model_id, Totals())
    return summarize_table(dt, model_id)
