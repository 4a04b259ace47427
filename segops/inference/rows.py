"""The rows of the results table (docs/infer.md): one list of columns, :data:`COLUMNS`, each with
its name, Arrow type, how its value is computed from one segmented image, whether it may be
null, and what it means. The Arrow schema (:func:`metrics_schema`) and the row of an image
(:func:`metrics_row`) are both made from it, so a new column is one entry. Where the rows go (the
Delta table, staging, the commit) is segops.inference.table.

The per-class columns and the CxC matrices follow the label set of the model
(:func:`columns_for`); :data:`COLUMNS` are the Cityscapes ones, the default."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from segops.core import metrics
from segops.core.formatting import finite_or_none
from segops.core.label_sets import LabelSet, cityscapes
from segops.inference.discovery import WorkItem
from segops.inference.previous import PreviousMask
from segops.inference.stage_values import Segmented

STAGES = ("before", "after")  # the model's argmax, the CRF result


def class_columns(label_set: LabelSet) -> tuple[str, ...]:
    """The label set's class names as column suffixes."""
    return tuple(n.replace(" ", "_") for n in label_set.class_names)


def schema_metadata(label_set: LabelSet) -> dict[str, str]:
    c = label_set.num_classes
    meta = {
        "segops.classes": json.dumps(list(label_set.class_names)),
        "segops.confusion": f"row-major {c}x{c}, rows = ground truth trainId, columns = prediction",
        "segops.transitions": f"row-major {c}x{c}, rows = the replaced mask's trainId, columns = this mask's",
    }
    if not label_set.is_default:  # Cityscapes tables stay as they were
        meta["segops.label_set"] = json.dumps({"name": label_set.name, "digest": label_set.digest})
    return meta


CLASS_COLUMNS = class_columns(cityscapes())
SCHEMA_METADATA = schema_metadata(cityscapes())


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


def class_pixels(mask: np.ndarray, num_classes: int = cityscapes().num_classes) -> list[int]:
    """Pixels per trainId (0..C-1) of a mask: which classes an unlabelled image shows."""
    return [int(v) for v in np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]]


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


def _stage_columns(stage: str, label_set: LabelSet) -> tuple[list[Column], list[Column], Column]:
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
        for i, name in enumerate(class_columns(label_set))
    ]  # fmt: skip
    c = label_set.num_classes
    confusion = Column(f"confusion_{stage}", "list<int64>", _scored(stage, lambda s: [int(v) for v in s.confusion.ravel()]),
                       True, f"{c}x{c} = {c * c} counts, row-major, rows = ground truth trainId, columns = prediction")  # fmt: skip
    return summary, per_class, confusion


@functools.cache
def _columns(label_set: LabelSet) -> tuple[Column, ...]:
    c = label_set.num_classes
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
        Column("class_pixels", "list<int64>", lambda r: class_pixels(r.written_mask, c), False,
               f"pixels per trainId in the written mask ({c})"),
    ]  # fmt: skip
    stages = [_stage_columns(stage, label_set) for stage in STAGES]
    # the order of the tables written so far: summaries of both stages, per-class scores, confusions
    for summary, _, _ in stages:
        cols += summary
    for _, per_class, _ in stages:
        cols += per_class
    cols += [confusion for _, _, confusion in stages]
    cols += _previous_columns(c)  # last: a table written before them gains them at its end (MERGE evolves its schema)
    return tuple(cols)


def _previous(value: Callable[[PreviousMask], Any]) -> Callable[[RowSource], Any]:
    return lambda src: None if src.seg.previous is None else value(src.seg.previous)


def _previous_columns(c: int) -> list[Column]:
    """The comparison with the mask the written one replaced (segops.inference.previous)."""
    return [
        Column("previous_model_id", "string", _previous(lambda p: p.model_id), True,
               "the model whose trainIds mask this row's mask replaced; null: none, or its model unknown"),
        Column("agreement_with_previous", "double", _previous(lambda p: p.agreement), True,
               "fraction of pixels whose class the replaced mask had too; null: no mask replaced"),
        Column("transitions_from_previous", "list<int64>", _previous(lambda p: [int(v) for v in p.transitions.ravel()]),
               True, f"{c}x{c} = {c * c} counts, row-major, rows = the replaced mask's trainId, columns = this mask's"),
    ]  # fmt: skip


def columns_for(label_set: LabelSet | None = None) -> tuple[Column, ...]:
    """The columns of a table of ``label_set``'s classes (Cityscapes when None)."""
    return _columns(label_set or cityscapes())


COLUMNS: tuple[Column, ...] = columns_for()


def metrics_schema(label_set: LabelSet | None = None) -> Any:
    """The results table's Arrow schema for ``label_set`` (Cityscapes when None), with the class
    names in its metadata."""
    import pyarrow as pa

    ls = label_set or cityscapes()
    return pa.schema([(c.name, _arrow_type(pa, c.arrow)) for c in columns_for(ls)], metadata=schema_metadata(ls))


def stage_scores(gt: np.ndarray | None, pred: np.ndarray | None, num_classes: int) -> StageScores | None:
    if gt is None or pred is None:
        return None
    cm = metrics.confusion_matrix(gt, pred, num_classes)
    return StageScores(cm, metrics.iou_per_class(cm), metrics.dice_per_class(cm))


def metrics_row(seg: Segmented, *, model_id: str, run_id: str, label_set: LabelSet | None = None) -> dict[str, Any]:
    """The row of one segmented image, in schema order; per-class scores null where undefined."""
    ls = label_set or cityscapes()
    gt, c = seg.example.gt, ls.num_classes
    scores = {"before": stage_scores(gt, seg.pred_before, c), "after": stage_scores(gt, seg.pred_after, c)}
    src = RowSource(seg, model_id, run_id, scores)
    return {col.name: col.value(src) for col in columns_for(ls)}
