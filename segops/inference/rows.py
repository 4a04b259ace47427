"""The rows of the results table (docs/infer.md): one list of columns, :data:`COLUMNS`, each with
its name, Arrow type, how its value is computed from one segmented image, whether it may be
null, and what it means. The Arrow schema (:func:`metrics_schema`) and the row of an image
(:func:`metrics_row`) are both made from it, so a new column is one entry. Where the rows go (the
Delta table, staging, the commit) is segops.inference.table."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from segops.core import labels, metrics
from segops.core.formatting import finite_or_none
from segops.inference.discovery import WorkItem
from segops.inference.previous import PreviousMask
from segops.inference.stage_values import Segmented

STAGES = ("before", "after")  # the model's argmax, the CRF result
CLASS_COLUMNS = tuple(n.replace(" ", "_") for n in labels.CLASS_NAMES)  # class names as column suffixes
SCHEMA_METADATA = {
    "segops.classes": json.dumps(list(labels.CLASS_NAMES)),
    "segops.confusion": "row-major 19x19, rows = ground truth trainId, columns = prediction",
    "segops.transitions": "row-major 19x19, rows = the replaced mask's trainId, columns = this mask's",
}


@dataclass(frozen=True)
class StageScores:
    """One stage's confusion matrix and per-class scores, computed once per row."""

    confusion: np.ndarray
    iou: np.ndarray
    dice: np.ndarray


@dataclass(frozen=True)
class RowSource:
    """What a row is computed from: the segmented image, the run, and each stage's scores (None
    without ground truth, or for "after" without the CRF)."""

    seg: Segmented
    model_id: str
    run_id: str
    scores: dict[str, StageScores | None]

    @property
    def item(self) -> WorkItem:
        return self.seg.example.item

    @property
    def written_mask(self) -> np.ndarray:
        return self.seg.pred_before if self.seg.pred_after is None else self.seg.pred_after


@dataclass(frozen=True)
class Column:
    name: str
    arrow: str  # a key of _ARROW_TYPES (the names docs/infer.md uses)
    value: Callable[[RowSource], Any]
    # whether the value may be null; the Arrow fields all stay nullable, as in the tables written so far
    nullable: bool
    doc: str


def _arrow_type(pa: Any, name: str) -> Any:
    return {
        "string": pa.string(),
        "int64": pa.int64(),
        "int32": pa.int32(),
        "double": pa.float64(),
        "bool": pa.bool_(),
        "list<int64>": pa.list_(pa.int64()),
    }[name]


def class_pixels(mask: np.ndarray) -> list[int]:
    """Pixels per trainId (0..18) of a mask: which classes an unlabelled image shows."""
    return [int(v) for v in np.bincount(mask.ravel(), minlength=labels.NUM_CLASSES)[: labels.NUM_CLASSES]]


def _crf_changed_fraction(src: RowSource) -> float | None:
    after = src.seg.pred_after
    return None if after is None else float(np.mean(after != src.seg.pred_before))


def _scored(stage: str, score: Callable[[StageScores], Any]) -> Callable[[RowSource], Any]:
    """A column value from ``stage``'s scores; null where the stage has none."""

    def value(src: RowSource) -> Any:
        scores = src.scores[stage]
        return None if scores is None else score(scores)

    return value


def _per_class(scores: str, index: int) -> Callable[[StageScores], float | None]:
    return lambda s: finite_or_none(getattr(s, scores)[index])


def _stage_columns(stage: str) -> tuple[list[Column], list[Column], Column]:
    """(summary scores, per-class IoU then Dice, confusion matrix) of one stage."""
    summary = [
        Column(f"pixel_accuracy_{stage}", "double", _scored(stage, lambda s: finite_or_none(metrics.pixel_accuracy(s.confusion))),
               True, "correct / non-ignored pixels"),
        Column(f"mean_iou_{stage}", "double", _scored(stage, lambda s: finite_or_none(metrics.nanmean_or_nan(s.iou))),
               True, "mean over classes with a score"),
        Column(f"mean_dice_{stage}", "double", _scored(stage, lambda s: finite_or_none(metrics.nanmean_or_nan(s.dice))),
               True, "mean over classes with a score"),
    ]  # fmt: skip
    undefined = "null where the class is in neither prediction nor ground truth"
    per_class = [
        Column(f"{scores}_{stage}_{name}", "double", _scored(stage, _per_class(scores, i)), True, f"{scores} of {name}; {undefined}")
        for scores in ("iou", "dice")
        for i, name in enumerate(CLASS_COLUMNS)
    ]  # fmt: skip
    confusion = Column(f"confusion_{stage}", "list<int64>", _scored(stage, lambda s: [int(v) for v in s.confusion.ravel()]),
                       True, "19x19 = 361 counts, row-major, rows = ground truth trainId, columns = prediction")  # fmt: skip
    return summary, per_class, confusion


def _columns() -> tuple[Column, ...]:
    cols = [
        Column("path", "string", lambda r: r.item.path, False, "input image URI (absolute)"),
        Column("rel_path", "string", lambda r: r.item.rel, False, "path relative to INPUT (the masks mirror it)"),
        Column("label_path", "string", lambda r: r.item.label_path, True, "ground truth used, if any"),
        Column("input_size", "int64", lambda r: r.item.size, False, "the input file's size in bytes when it was processed"),
        Column("input_mtime", "double", lambda r: r.item.mtime, False, "its modification time (epoch seconds)"),
        Column("height", "int32", lambda r: int(r.seg.pred_before.shape[0]), False, "image height"),
        Column("width", "int32", lambda r: int(r.seg.pred_before.shape[1]), False, "image width"),
        Column("model_id", "string", lambda r: r.model_id, False, "architecture + digest of the weights"),
        Column("run_id", "string", lambda r: r.run_id, False, "the run that wrote the row"),
        Column("crf", "bool", lambda r: r.seg.pred_after is not None, False, "whether the masks are CRF-refined"),
        Column("has_labels", "bool", lambda r: r.seg.example.gt is not None, False, "whether ground truth was found"),
        Column("inference_ms", "double", lambda r: float(r.seg.inference_ms), False, "this image's share of its batch's model time"),
        Column("crf_ms", "double", lambda r: None if r.seg.crf_ms is None else float(r.seg.crf_ms), True, "CRF time"),
        Column("mean_confidence", "double", lambda r: float(r.seg.mean_confidence), False, "mean top softmax probability"),
        Column("low_confidence_fraction", "double", lambda r: float(r.seg.low_confidence_fraction), False,
               "fraction of pixels whose top probability is < 0.5"),
        Column("crf_changed_fraction", "double", _crf_changed_fraction, True, "fraction of pixels the CRF relabelled"),
        Column("class_pixels", "list<int64>", lambda r: class_pixels(r.written_mask), False,
               "pixels per trainId in the written mask (19)"),
    ]  # fmt: skip
    stages = [_stage_columns(stage) for stage in STAGES]
    # the order of the tables written so far: summaries of both stages, per-class scores, confusions
    for summary, _, _ in stages:
        cols += summary
    for _, per_class, _ in stages:
        cols += per_class
    cols += [confusion for _, _, confusion in stages]
    cols += _previous_columns()  # last: a table written before them gains them at its end (MERGE evolves its schema)
    return tuple(cols)


def _previous(value: Callable[[PreviousMask], Any]) -> Callable[[RowSource], Any]:
    return lambda src: None if src.seg.previous is None else value(src.seg.previous)


def _previous_columns() -> list[Column]:
    """The comparison with the mask the written one replaced (segops.inference.previous)."""
    return [
        Column("previous_model_id", "string", _previous(lambda p: p.model_id), True,
               "the model whose trainIds mask this row's mask replaced; null: none, or its model unknown"),
        Column("agreement_with_previous", "double", _previous(lambda p: p.agreement), True,
               "fraction of pixels whose class the replaced mask had too; null: no mask replaced"),
        Column("transitions_from_previous", "list<int64>", _previous(lambda p: [int(v) for v in p.transitions.ravel()]),
               True, "19x19 = 361 counts, row-major, rows = the replaced mask's trainId, columns = this mask's"),
    ]  # fmt: skip


COLUMNS: tuple[Column, ...] = _columns()


def metrics_schema() -> Any:
    """The results table's Arrow schema, with the class names in its metadata."""
    import pyarrow as pa

    return pa.schema([(c.name, _arrow_type(pa, c.arrow)) for c in COLUMNS], metadata=SCHEMA_METADATA)


def stage_scores(gt: np.ndarray | None, pred: np.ndarray | None) -> StageScores | None:
    if gt is None or pred is None:
        return None
    cm = metrics.confusion_matrix(gt, pred)
    return StageScores(cm, metrics.iou_per_class(cm), metrics.dice_per_class(cm))


def metrics_row(seg: Segmented, *, model_id: str, run_id: str) -> dict[str, Any]:
    """The row of one segmented image, in schema order; per-class scores null where undefined."""
    gt = seg.example.gt
    scores = {"before": stage_scores(gt, seg.pred_before), "after": stage_scores(gt, seg.pred_after)}
    src = RowSource(seg, model_id, run_id, scores)
    return {c.name: c.value(src) for c in COLUMNS}
