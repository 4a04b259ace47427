"""`segops compare`: what changed between two models' masks of one infer OUT.

When a model is pointed at an OUT another model labelled, its mask writer compares each new mask
with the one it replaces (segops.inference.previous) and its rows carry that comparison
(``previous_model_id``, ``agreement_with_previous``, ``transitions_from_previous``). This module
folds those rows, and the old model's rows for the same images, into a comparison: per image the
pixel agreement, the changed fraction and both models' mIoU (with ground truth); the summed
class-by-class transition matrix; the dataset-level agreement and mIoU (from the summed confusion
matrices of the images both rows have ground truth for). The table is scanned in record batches
of a few columns; what is kept is a few scalars per compared image.

The per-image table is a ranking `segops review select --ranking` takes (``path``, ``score`` =
the changed fraction, highest first).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segops.core import fs, labels, layout, metrics
from segops.core.formatting import finite_or_none, fmt_score
from segops.core.label_sets import LabelSet, cityscapes
from segops.inference import table

SCAN_BATCH_ROWS = 4096  # ~12 MB of 19x19 matrices per batch (Cityscapes)
DEFAULT_TOP = 10
_MIOU_COLUMNS = ("has_labels", "crf", "mean_iou_before", "mean_iou_after")
_COMPARE_COLUMNS = ("path", "rel_path", "previous_model_id", "agreement_with_previous", "transitions_from_previous")
_CONFUSION_COLUMNS = ("path", "has_labels", "crf", "confusion_before", "confusion_after")


class CompareError(ValueError):
    """A comparison that cannot be made as asked (no rows, no or several previous models)."""


def _zeros(num_classes: int) -> np.ndarray:
    return np.zeros((num_classes, num_classes), np.int64)


@dataclass
class Comparison:
    """``new_model``'s masks against the ``old_model`` masks they replaced, in the classes of the
    table's label set (``label_set``: Cityscapes' 19 by default)."""

    new_model: str
    old_model: str
    images: Any  # pyarrow Table, one row per compared image, most changed first (:func:`images_table`)
    label_set: LabelSet = field(default_factory=cityscapes)
    transitions: np.ndarray = field(init=False)  # rows = old trainId, columns = new
    unknown_previous: int = 0  # compared images whose replaced mask recorded no model (taken as old's)
    not_compared: int = 0  # new_model's rows with no comparison with old_model
    labelled: int = 0  # compared images both rows have ground truth for
    confusion_old: np.ndarray = field(init=False)  # summed over those images
    confusion_new: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        classes = self.label_set.num_classes
        self.transitions, self.confusion_old, self.confusion_new = (_zeros(classes) for _ in range(3))


def _table(infer_out: str) -> tuple[list[str], LabelSet]:
    """The table's data files at its current version (every scan of one comparison reads these)
    and the label set its rows are in."""
    dt = table.open_table(infer_out)
    return list(dt.file_uris()), table.table_label_set(dt)


def _data_files(infer_out: str) -> list[str]:
    return _table(infer_out)[0]


def _batches(files: list[str], columns: tuple[str, ...], model_id: str, extra: Any = None) -> Iterator[Any]:
    dataset = table.rows_dataset(files)
    wanted = table.model_filter(model_id) if extra is None else table.model_filter(model_id) & extra
    yield from dataset.to_batches(columns=list(columns), filter=wanted, batch_size=SCAN_BATCH_ROWS)


def _models(files: list[str]) -> list[str]:
    dataset = table.rows_dataset(files)
    found: set[str] = set()
    for batch in dataset.to_batches(columns=["model_id"], batch_size=SCAN_BATCH_ROWS * 16):
        found.update(batch.column("model_id").to_pylist())
    return sorted(found)


def _compared_filter() -> Any:
    import pyarrow.dataset as ds

    return ds.field("agreement_with_previous").is_valid()


def previous_models(files: list[str], new_model: str) -> Counter[str | None]:
    """How many of ``new_model``'s rows compare with a mask of each model (None: model unknown)."""
    counts: Counter[str | None] = Counter()
    for batch in _batches(files, ("previous_model_id",), new_model, _compared_filter()):
        counts.update(batch.column("previous_model_id").to_pylist())
    return counts


def default_against(infer_out: str, new_model: str, files: list[str] | None = None) -> str:
    """The one model ``new_model``'s masks replaced; CompareError when none or several."""
    counts = previous_models(_data_files(infer_out) if files is None else files, new_model)
    known = sorted(m for m in counts if m is not None)
    if len(known) == 1:
        return known[0]
    if len(known) > 1:
        listed = ", ".join(f"{m} ({counts[m]} images)" for m in known)
        raise CompareError(f"the masks of {new_model} replaced those of several models: {listed}; choose one with --against")
    if counts:
        raise CompareError(f"the {counts[None]} mask(s) {new_model} replaced record no model (written by a segops "
                           "before masks named their model): name that model with --against OLD")  # fmt: skip
    raise CompareError(f"no mask of {new_model} replaced another model's: it was the first model run into "
                       f"{infer_out}, or its runs found only its own masks")  # fmt: skip


def _written(batch: Any, prefix: str) -> list[Any]:
    """Per row, the written mask's value of ``<prefix>_after`` (CRF) or ``<prefix>_before``."""
    crf = batch.column("crf").to_pylist()
    after, before = batch.column(f"{prefix}_after").to_pylist(), batch.column(f"{prefix}_before").to_pylist()
    return [a if c else b for c, a, b in zip(crf, after, before, strict=True)]


def _mious(files: list[str], model_id: str, paths: set[str]) -> dict[str, float | None]:
    """path -> the written mask's mIoU (None without ground truth) of ``model_id``'s rows in ``paths``."""
    out: dict[str, float | None] = {}
    for batch in _batches(files, ("path", *_MIOU_COLUMNS), model_id):
        for path, labelled, miou in zip(batch.column("path").to_pylist(), batch.column("has_labels").to_pylist(),
                                        _written(batch, "mean_iou"), strict=True):  # fmt: skip
            if path in paths:
                out[path] = finite_or_none(miou) if labelled else None
    return out


def _confusion_sum(files: list[str], model_id: str, paths: set[str], num_classes: int) -> np.ndarray:
    total = _zeros(num_classes)
    for batch in _batches(files, _CONFUSION_COLUMNS, model_id):
        for path, labelled, cm in zip(batch.column("path").to_pylist(), batch.column("has_labels").to_pylist(),
                                      _written(batch, "confusion"), strict=True):  # fmt: skip
            if labelled and cm is not None and path in paths:
                total += np.asarray(cm, np.int64).reshape(num_classes, num_classes)
    return total


def compare(infer_out: str, new_model: str, against: str | None = None) -> Comparison:
    """``new_model``'s rows against ``against`` (default: :func:`default_against`). With an explicit
    ``against``, masks that recorded no model (older runs) are taken as ``against``'s."""
    files, label_set = _table(infer_out)
    classes = label_set.num_classes
    models = _models(files)
    for model in (new_model, against):
        if model is not None and model not in models:
            raise CompareError(f"model {model!r} has no rows in {infer_out}; the table holds: {', '.join(models) or 'none'}")
    old = against or default_against(infer_out, new_model, files)
    result = Comparison(new_model, old, None, label_set)
    paths: list[str] = []
    rels: list[str] = []
    recorded: list[str | None] = []
    agreements: list[float] = []
    for batch in _batches(files, _COMPARE_COLUMNS, new_model):
        for path, rel, model, agreement, counts in zip(*(batch.column(c).to_pylist() for c in _COMPARE_COLUMNS),
                                                       strict=True):  # fmt: skip
            if agreement is None or model not in (old, None):
                result.not_compared += 1
                continue
            result.unknown_previous += model is None
            result.transitions += np.asarray(counts, np.int64).reshape(classes, classes)
            paths.append(path)
            rels.append(rel)
            recorded.append(model)
            agreements.append(float(agreement))
    compared = set(paths)
    miou_new, miou_old = _mious(files, new_model, compared), _mious(files, old, compared)
    both = {p for p in compared if miou_new.get(p) is not None and miou_old.get(p) is not None}
    result.labelled = len(both)
    if both:
        result.confusion_new = _confusion_sum(files, new_model, both, classes)
        result.confusion_old = _confusion_sum(files, old, both, classes)
    result.images = images_table(new_model, old, paths, rels, recorded, agreements,
                                 [miou_old.get(p) for p in paths], [miou_new.get(p) for p in paths])  # fmt: skip
    return result


def images_table(new_model: str, old_model: str, paths: list[str], rels: list[str], recorded: list[str | None],
                 agreements: list[float], miou_old: list[float | None], miou_new: list[float | None]) -> Any:  # fmt: skip
    """The per-image comparison, most changed first (ties: path), with its ``rank``."""
    import pyarrow as pa

    changed = [1.0 - a for a in agreements]
    order = sorted(range(len(paths)), key=lambda i: (-changed[i], paths[i]))
    change = [None if o is None or n is None else n - o for o, n in zip(miou_old, miou_new, strict=True)]

    def col(values: list[Any], kind: Any) -> Any:
        return pa.array([values[i] for i in order], type=kind)

    return pa.table({
        "rank": pa.array(range(len(order)), type=pa.int32()),
        "path": col(paths, pa.string()),
        "rel_path": col(rels, pa.string()),
        "model_id": pa.array([new_model] * len(order), type=pa.string()),
        "against_model_id": pa.array([old_model] * len(order), type=pa.string()),
        "previous_model_id": col(recorded, pa.string()),  # as the mask recorded it: null = unknown
        "agreement": col(agreements, pa.float64()),
        "changed_fraction": col(changed, pa.float64()),
        "score": col(changed, pa.float64()),  # what `review select --ranking` orders by
        "miou_old": col(miou_old, pa.float64()),
        "miou_new": col(miou_new, pa.float64()),
        "miou_change": col(change, pa.float64()),
    })  # fmt: skip


def largest_transitions(transitions: np.ndarray, top: int, class_names: tuple[str, ...] = labels.CLASS_NAMES
                        ) -> list[dict[str, Any]]:  # fmt: skip
    """The ``top`` largest off-diagonal cells: from class, to class, pixels, fraction of all."""
    total = int(transitions.sum())
    off = transitions.copy()
    np.fill_diagonal(off, 0)
    cells = [(int(off[i, j]), class_names[i], class_names[j]) for i, j in zip(*np.nonzero(off), strict=True)]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"from": a, "to": b, "pixels": n, "fraction": n / total} for n, a, b in cells[:top]]


def summary(result: Comparison, top: int = DEFAULT_TOP) -> dict[str, Any]:
    """The comparison as JSON-able data (what compare_<old>_<new>.json holds)."""
    pixels = int(result.transitions.sum())
    agreement = float(np.trace(result.transitions)) / pixels if pixels else None
    agreements = result.images.column("agreement").to_numpy()
    miou = {"old": None, "new": None, "change": None}
    if result.labelled:
        miou["old"] = finite_or_none(metrics.mean_iou(result.confusion_old))
        miou["new"] = finite_or_none(metrics.mean_iou(result.confusion_new))
        if miou["old"] is not None and miou["new"] is not None:
            miou["change"] = miou["new"] - miou["old"]
    most = result.images.slice(0, top).select(["rel_path", "changed_fraction", "miou_old", "miou_new"])
    return {
        "model_id": result.new_model,
        "against_model_id": result.old_model,
        "images_compared": result.images.num_rows,
        "previous_model_unknown": result.unknown_previous,
        "images_not_compared": result.not_compared,
        "pixels_compared": pixels,
        "agreement": agreement,
        "changed_fraction": None if agreement is None else 1.0 - agreement,
        "mean_image_agreement": float(agreements.mean()) if len(agreements) else None,
        "labelled_images": result.labelled,
        "dataset_miou": miou,
        "largest_transitions": largest_transitions(result.transitions, top, result.label_set.class_names),
        "most_changed": most.to_pylist(),
        "label_set": result.label_set.name,
        "classes": list(result.label_set.class_names),
        "transitions": result.transitions.tolist(),
        "definitions": {
            "agreement": "pixels of the same class in both masks / pixels compared, over all compared images",
            "transitions": "CxC pixel counts (C: the label set's classes), rows = the old model's trainId, "
            "columns = the new model's",
            "dataset_miou": "mIoU (Cityscapes definition) of each model's summed confusion matrix over the compared images "
            "both rows have ground truth for (the written masks: CRF-refined where the run used the CRF)",
        },
    }


def output_paths(infer_out: str, old_model: str, new_model: str) -> dict[str, str]:
    review = fs.join(infer_out, layout.REVIEW_DIR)
    return {ext: fs.join(review, layout.compare_name(old_model, new_model, ext)) for ext in ("parquet", "json")}


def write_comparison(infer_out: str, result: Comparison, top: int = DEFAULT_TOP) -> dict[str, str]:
    """Write the per-image Parquet and the JSON summary (atomically); returns their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = output_paths(infer_out, result.old_model, result.new_model)
    sink = pa.BufferOutputStream()
    pq.write_table(result.images, sink)
    fs.write_bytes_atomic(paths["parquet"], sink.getvalue().to_pybytes())
    fs.write_json_atomic(paths["json"], summary(result, top))
    return paths


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def format_comparison(data: dict[str, Any]) -> str:
    """The summary as text: counts, agreement, mIoU, the largest transitions, the most-changed images."""
    unknown = data["previous_model_unknown"]
    lines = [
        f"{data['model_id']} against {data['against_model_id']}: {data['images_compared']} image(s) compared"
        + (f" ({unknown} whose previous mask recorded no model)" if unknown else "")
        + f", {data['images_not_compared']} not compared",
        f"pixel agreement {_percent(data['agreement'])} (mean per image {_percent(data['mean_image_agreement'])})",
    ]
    miou = data["dataset_miou"]
    if data["labelled_images"]:
        change = "-" if miou["change"] is None else f"{miou['change']:+.4f}"
        lines.append(f"mIoU {fmt_score(miou['old'], missing='-')} -> {fmt_score(miou['new'], missing='-')} ({change}) "
                     f"over {data['labelled_images']} image(s) with ground truth")  # fmt: skip
    if data["largest_transitions"]:
        lines.append("largest class changes (share of the pixels compared):")
        lines += [f"  {t['from']} -> {t['to']}  {_percent(t['fraction'])}" for t in data["largest_transitions"]]
    if data["most_changed"]:
        lines.append(f"most-changed images:\n  {'changed':>8}  {'mIoU old':>8}  {'new':>6}  image")
        lines += [f"  {_percent(r['changed_fraction']):>8}  {fmt_score(r['miou_old'], missing='-'):>8}  "
                  f"{fmt_score(r['miou_new'], missing='-'):>6}  {r['rel_path']}" for r in data["most_changed"]]  # fmt: skip
    return "\n".join(lines)
