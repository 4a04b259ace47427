"""The results table of `segops infer`: one row per (image, model) with its per-class IoU/Dice
before and after the CRF and its confusion matrices (:func:`metrics_schema`, :func:`metrics_row`),
and its upkeep across runs: reading it, deciding which images are already done (:func:`plan`),
and removing the rows a run is about to replace (:func:`prune_rows`)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segops.core import fs, labels, layout, metrics
from segops.core.formatting import finite_or_none
from segops.inference.discovery import WorkItem
from segops.inference.examples import ImageExample
from segops.inference.masks import mask_paths
from segops.inference.options import InferOptions


def _column_name(name: str) -> str:
    return name.replace(" ", "_")


CLASS_COLUMNS = tuple(_column_name(n) for n in labels.CLASS_NAMES)
STAGES = ("before", "after")


def metrics_schema() -> Any:
    """Explicit Parquet schema of metrics.parquet (documented in docs/infer.md)."""
    import pyarrow as pa

    cols: list[tuple[str, Any]] = [
        ("path", pa.string()),
        ("rel_path", pa.string()),
        ("label_path", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("model_id", pa.string()),
        ("run_id", pa.string()),
        ("crf", pa.bool_()),
        ("has_labels", pa.bool_()),
        ("inference_ms", pa.float64()),
        ("crf_ms", pa.float64()),
        ("mean_confidence", pa.float64()),
        ("low_confidence_fraction", pa.float64()),
        ("crf_changed_fraction", pa.float64()),
    ]
    for stage in STAGES:
        cols += [
            (f"pixel_accuracy_{stage}", pa.float64()),
            (f"mean_iou_{stage}", pa.float64()),
            (f"mean_dice_{stage}", pa.float64()),
        ]
    for stage in STAGES:
        cols += [(f"iou_{stage}_{c}", pa.float64()) for c in CLASS_COLUMNS]
        cols += [(f"dice_{stage}_{c}", pa.float64()) for c in CLASS_COLUMNS]
    for stage in STAGES:
        cols.append((f"confusion_{stage}", pa.list_(pa.int64())))
    meta = {
        "segops.classes": json.dumps(list(labels.CLASS_NAMES)),
        "segops.confusion": "row-major 19x19, rows = ground truth trainId, columns = prediction",
    }
    return pa.schema(cols, metadata=meta)


def _stage_metrics(gt: np.ndarray | None, pred: np.ndarray | None, stage: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if gt is None or pred is None:
        row.update({f"pixel_accuracy_{stage}": None, f"mean_iou_{stage}": None, f"mean_dice_{stage}": None})
        row.update({f"iou_{stage}_{c}": None for c in CLASS_COLUMNS})
        row.update({f"dice_{stage}_{c}": None for c in CLASS_COLUMNS})
        row[f"confusion_{stage}"] = None
        return row
    cm = metrics.confusion_matrix(gt, pred)
    iou, dice = metrics.iou_per_class(cm), metrics.dice_per_class(cm)
    row[f"pixel_accuracy_{stage}"] = finite_or_none(metrics.pixel_accuracy(cm))
    row[f"mean_iou_{stage}"] = finite_or_none(metrics.nanmean_or_nan(iou))
    row[f"mean_dice_{stage}"] = finite_or_none(metrics.nanmean_or_nan(dice))
    row.update({f"iou_{stage}_{c}": finite_or_none(v) for c, v in zip(CLASS_COLUMNS, iou, strict=True)})
    row.update({f"dice_{stage}_{c}": finite_or_none(v) for c, v in zip(CLASS_COLUMNS, dice, strict=True)})
    row[f"confusion_{stage}"] = [int(v) for v in cm.ravel()]
    return row


def metrics_row(
    example: ImageExample,
    *,
    model_id: str,
    run_id: str,
    pred_before: np.ndarray,
    pred_after: np.ndarray | None,
    mean_confidence: float,
    low_confidence_fraction: float,
    inference_ms: float,
    crf_ms: float | None,
) -> dict[str, Any]:
    """One Parquet row (see :func:`metrics_schema`); per-class scores null where undefined."""
    h, w = pred_before.shape
    row: dict[str, Any] = {
        "path": example.item.path,
        "rel_path": example.item.rel,
        "label_path": example.item.label_path,
        "height": int(h),
        "width": int(w),
        "model_id": model_id,
        "run_id": run_id,
        "crf": pred_after is not None,
        "has_labels": example.gt is not None,
        "inference_ms": float(inference_ms),
        "crf_ms": None if crf_ms is None else float(crf_ms),
        "mean_confidence": float(mean_confidence),
        "low_confidence_fraction": float(low_confidence_fraction),
        "crf_changed_fraction": None if pred_after is None else float(np.mean(pred_after != pred_before)),
    }
    row.update(_stage_metrics(example.gt, pred_before, "before"))
    row.update(_stage_metrics(example.gt, pred_after, "after"))
    return row


def _metrics_files(output: str) -> list[str]:
    """Committed part files of metrics.parquet (Beam's temporary directories excluded)."""
    root = fs.join(output, layout.METRICS_DIR)
    return [p for p in fs.match(fs.join(root, "**")) if p.endswith(".parquet") and "/beam-temp-" not in p]


def _read_parquet(path: str, columns: list[str] | None = None) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(fs.read_bytes(path)), columns=columns)


def read_metrics(output: str, columns: list[str] | None = None) -> Any:
    """All rows of OUT/metrics.parquet (every run partition) as one pyarrow Table."""
    import pyarrow as pa

    tables = [_read_parquet(p, columns) for p in _metrics_files(output)]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        schema = metrics_schema()
        return schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)


def clean_stale_temp(output: str) -> int:
    """Remove ``beam-temp-*`` directories an interrupted run left under metrics.parquet."""
    stale = {p[: p.index("/beam-temp-") + 1] + p[p.index("/beam-temp-") + 1 :].split("/")[0]
             for p in fs.match(fs.join(output, layout.METRICS_DIR, "**")) if "/beam-temp-" in p}  # fmt: skip
    if stale:
        fs.delete(sorted(stale))
    return len(stale)


@dataclass
class Plan:
    todo: list[WorkItem]
    skipped: list[WorkItem]


def plan(items: Sequence[WorkItem], options: InferOptions, model_id: str) -> Plan:
    """Split ``items`` into those to process and those already done for this model.

    Done = all its mask files exist (one match over OUT/masks) *and* metrics.parquet holds a row
    for (path, model_id). Masks are written before rows are committed, so an image whose masks
    exist but whose row is missing was interrupted mid-run and is processed again.
    """
    if options.overwrite:
        return Plan(list(items), [])
    existing = set(fs.match(fs.join(options.output, layout.MASKS_DIR, "**")))
    table = read_metrics(options.output, ["path", "model_id"])
    done_rows = {p for p, m in zip(table.column("path").to_pylist(), table.column("model_id").to_pylist(), strict=True) if m == model_id}
    todo, skipped = [], []
    for it in items:
        outputs = mask_paths(options.output, it, options.overlay).values()
        (skipped if it.path in done_rows and all(p in existing for p in outputs) else todo).append(it)
    return Plan(todo, skipped)


def prune_rows(output: str, model_id: str, paths: Iterable[str]) -> int:
    """Delete rows (path, model_id) for ``paths`` from earlier runs' part files; returns rows removed.

    Run before the pipeline writes its own partition: if the run then dies, those images have
    no row and the next run processes them again, so the table never holds two rows for one
    (image, model).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    targets = pa.array(sorted(set(paths)), pa.string())
    if len(targets) == 0:
        return 0
    removed = 0
    for part in _metrics_files(output):
        table = _read_parquet(part)
        drop = pc.and_(pc.equal(table.column("model_id"), model_id), pc.is_in(table.column("path"), value_set=targets))
        n = pc.sum(drop).as_py() or 0
        if not n:
            continue
        kept = table.filter(pc.invert(drop))
        removed += n
        if kept.num_rows == 0:
            fs.delete([part])
            partition = fs.split(part)[0]
            if not fs.match(fs.join(partition, "**")):  # drop the emptied run=... directory too
                with contextlib.suppress(Exception):
                    fs.delete([partition])
            continue
        buf = io.BytesIO()
        pq.write_table(kept, buf)
        fs.write_bytes_atomic(part, buf.getvalue())
    return removed
