"""The rows of the results table (docs/infer.md): one list of columns, :data:`COLUMNS`, each with
its name, Arrow type, how its value is computed from one segmented image, whether it may be
null, and what it means. The Arrow schema (:func:`metrics_schema`), the row of an image
(:func:`metrics_row`) and the table of columns in docs/infer.md (:func:`columns_markdown`) are all
made from it, so a new column is one entry. Where the rows go (the Delta table, staging, the
commit) is segops.inference.table.

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
ANY_STAGE = "{" + ",".join(STAGES) + "}"  # the stages in a column family's name: `mean_iou_{before,after}`


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
    arrow: str  # a type name of _arrow_type (the names docs/infer.md uses)
    value: Callable[[RowSource], Any]
    # whether the value may be null: the Arrow field's nullability (see metrics_schema)
    nullable: bool
    doc: str  # what it means: the "meaning" cell of its row of the table in docs/infer.md
    # the name of that row when the column shares it with its siblings of other stages or
    # classes (`iou_{before,after}_<class>`); "": the column's own name
    family: str = ""


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
               True, "correct / non-ignored pixels", f"pixel_accuracy_{ANY_STAGE}"),
        Column(f"mean_iou_{stage}", "double", _scored(stage, lambda s: finite_or_none(metrics.nanmean_or_nan(s.iou))),
               True, "mean over classes with a score", f"mean_iou_{ANY_STAGE}"),
        Column(f"mean_dice_{stage}", "double", _scored(stage, lambda s: finite_or_none(metrics.nanmean_or_nan(s.dice))),
               True, "mean over classes with a score", f"mean_dice_{ANY_STAGE}"),
    ]  # fmt: skip
    names = class_columns(label_set)
    c = label_set.num_classes
    each = (f"{c} classes each (`{names[0]}` ... `{names[-1]}`, spaces as `_`); "
            "null where the class is in neither prediction nor ground truth")  # fmt: skip
    per_class = [
        Column(f"{scores}_{stage}_{name}", "double", _scored(stage, _per_class(scores, i)), True, each,
               f"{scores}_{ANY_STAGE}_<class>")
        for scores in ("iou", "dice")
        for i, name in enumerate(names)
    ]  # fmt: skip
    confusion = Column(f"confusion_{stage}", "list<int64>", _scored(stage, lambda s: [int(v) for v in s.confusion.ravel()]),
                       True, f"{c}x{c} = {c * c} counts, row-major, rows = ground truth trainId, columns = prediction",
                       f"confusion_{ANY_STAGE}")  # fmt: skip
    return summary, per_class, confusion


@functools.cache
def _columns(label_set: LabelSet) -> tuple[Column, ...]:
    c = label_set.num_classes
    cols = [
        Column("path", "string", lambda r: r.item.path, False, "input image URI (absolute)"),
        Column("rel_path", "string", lambda r: r.item.rel, False, "path relative to INPUT (the masks mirror it)"),
        Column("label_path", "string", lambda r: r.item.label_path, True, "ground truth used, if any"),
        Column("input_size", "int64", lambda r: r.item.size, False, "the input file's size in bytes when it was processed"),
        Column("input_mtime", "double", lambda r: r.item.mtime, False,
               "its modification time (epoch seconds); with `input_size` the fingerprint that tells a changed image from a done one"),
        Column("height", "int32", lambda r: int(r.seg.pred_before.shape[0]), False, "image size"),
        Column("width", "int32", lambda r: int(r.seg.pred_before.shape[1]), False, "image size"),
        Column("model_id", "string", lambda r: r.model_id, False, "`ModelInfo.model_id` (architecture + digest of the weights)"),
        Column("run_id", "string", lambda r: r.run_id, False,
               "the run that wrote the row (its commit carries the same id: `segops.run_id`)"),
        Column("crf", "bool", lambda r: r.seg.pred_after is not None, False, "whether the masks are CRF-refined"),
        Column("has_labels", "bool", lambda r: r.seg.example.gt is not None, False,
               "whether ground truth was found (metrics are null otherwise)"),
        Column("inference_ms", "double", lambda r: float(r.seg.inference_ms), False,
               "this image's share (by pixels) of its batch's model time"),
        Column("crf_ms", "double", lambda r: None if r.seg.crf_ms is None else float(r.seg.crf_ms), True,
               "CRF time (null with `--no-crf`)"),
        Column("mean_confidence", "double", lambda r: float(r.seg.mean_confidence), False,
               "mean over pixels of the top softmax probability"),
        Column("low_confidence_fraction", "double", lambda r: float(r.seg.low_confidence_fraction), False,
               "fraction of pixels whose top probability is < 0.5"),
        Column("crf_changed_fraction", "double", _crf_changed_fraction, True, "fraction of pixels whose label the CRF changed"),
        Column("class_pixels", "list<int64>", lambda r: class_pixels(r.written_mask, c), False,
               f"{c} counts: pixels per trainId in the written mask (after the CRF when it ran); which classes an "
               "unlabelled image shows (`segops review select --class`). A table written before this column gains "
               "it on the next run's MERGE (null in older rows)"),
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
               "the model whose trainIds mask this row's mask replaced; null when none was replaced, or its mask "
               "(from an older segops) named no model"),
        Column("agreement_with_previous", "double", _previous(lambda p: p.agreement), True,
               "fraction of pixels whose class the replaced mask had too; null when no mask was replaced (none, "
               "another size, unreadable, or this model's own: [A new model](scheduled.md#a-new-model))"),
        Column("transitions_from_previous", "list<int64>", _previous(lambda p: [int(v) for v in p.transitions.ravel()]),
               True, f"{c}x{c} = {c * c} counts, row-major, rows = the replaced mask's trainId, columns = this mask's "
               "(metadata `segops.transitions`)"),
    ]  # fmt: skip


def columns_for(label_set: LabelSet | None = None) -> tuple[Column, ...]:
    """The columns of a table of ``label_set``'s classes (Cityscapes when None)."""
    return _columns(label_set or cityscapes())


COLUMNS: tuple[Column, ...] = columns_for()


def metrics_schema(label_set: LabelSet | None = None) -> Any:
    """The results table's Arrow schema for ``label_set`` (Cityscapes when None), with the class
    names in its metadata; a field is nullable where its column is.

    Tables written before the fields carried their nullability are all-nullable; delta-rs
    (1.6) MERGEs rows of this schema into them (``merge_schema=True`` keeps their nullable
    fields, and a column a MERGE adds is nullable, null in the older rows), and pyarrow reads
    their nulls through it (:func:`segops.inference.table.rows_dataset`). A table created with
    it refuses a null in a non-nullable column at the commit: a column that may be null says so."""
    import pyarrow as pa

    ls = label_set or cityscapes()
    fields = [pa.field(c.name, _arrow_type(pa, c.arrow), nullable=c.nullable) for c in columns_for(ls)]
    return pa.schema(fields, metadata=schema_metadata(ls))


def columns_markdown(label_set: LabelSet | None = None) -> str:
    """The table of the columns in docs/infer.md (a test keeps the two equal): a row per column
    or per family of columns (:attr:`Column.family`), and one row for neighbours with the same type
    and meaning (`height`, `width`)."""
    families: dict[str, Column] = {}
    for col in columns_for(label_set):
        first = families.setdefault(col.family or col.name, col)
        if (first.arrow, first.nullable, first.doc) != (col.arrow, col.nullable, col.doc):
            raise ValueError(f"column {col.name} differs from {first.name}, the first of its family {col.family}")
    rows: list[tuple[list[str], Column]] = []
    for name, col in families.items():
        if rows and (rows[-1][1].arrow, rows[-1][1].nullable, rows[-1][1].doc) == (col.arrow, col.nullable, col.doc):
            rows[-1][0].append(name)
        else:
            rows.append(([name], col))
    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    for names, col in rows:
        kind = f"{col.arrow}, null" if col.nullable else col.arrow
        lines.append(f"| {', '.join(f'`{n}`' for n in names)} | {kind} | {col.doc.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


def stage_scores(gt: np.ndarray | None, pred: np.ndarray | None, num_classes: int) -> StageScores | None:
    if gt is None or pred is None:
        return None
    cm = metrics.confusion_matrix(gt, pred, num_classes)
    return StageScores(cm, metrics.iou_per_class(cm), metrics.dice_per_class(cm))


def metrics_row(seg: Segmented, *, model_id: str, run_id: str, label_set: LabelSet | None = None) -> dict[str, Any]:
    """The row of one segmented image, in schema order; per-class scores null where undefined.
    The example: a 2x2 image (road, road / car, ignored) whose model calls one road pixel car.

    Example:
        >>> from segops.inference.discovery import WorkItem
        >>> from segops.inference.stage_values import ImageExample, Segmented
        >>> gt = np.array([[0, 0], [13, 255]], np.uint8)
        >>> pred = np.array([[0, 13], [13, 13]], np.uint8)
        >>> item = WorkItem("/in/a.png", "a.png", "/gt/a.png", size=100, mtime=1.7e9)
        >>> example = ImageExample(item, np.zeros((2, 2, 3), np.uint8), gt)
        >>> seg = Segmented(example, pred, None, mean_confidence=0.9, low_confidence_fraction=0.0,
        ...                 inference_ms=12.5, crf_ms=None)
        >>> row = metrics_row(seg, model_id="unet-1", run_id="r1")
        >>> row["pixel_accuracy_before"], row["iou_before_road"], row["iou_before_car"]
        (0.6666666666666666, 0.5, 0.5)
        >>> row["crf"], row["mean_iou_after"]  # no CRF: every "after" score is null
        (False, None)
        >>> list(row) == [c.name for c in COLUMNS]
        True
    """
    ls = label_set or cityscapes()
    gt, c = seg.example.gt, ls.num_classes
    scores = {"before": stage_scores(gt, seg.pred_before, c), "after": stage_scores(gt, seg.pred_after, c)}
    src = RowSource(seg, model_id, run_id, scores)
    return {col.name: col.value(src) for col in columns_for(ls)}
