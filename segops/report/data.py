"""What the report reads: where each stage's output is (:class:`ReportPaths`) and everything the
report uses from it (:class:`RunData`, :func:`load_run`): infer's summary, manifest and results
rows, prepare's stats and class weights, train's history and model.json. Nothing else is read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from segops.core import fs, layout
from segops.core.label_sets import LabelSet, cityscapes


class ReportError(ValueError):
    """The inputs cannot make a report (no infer output); the message says what is missing."""


@dataclass
class ReportPaths:
    """Where each stage's output is; ``prepared`` and ``model`` are optional."""

    infer: str
    out: str
    prepared: str | None = None
    model: str | None = None

    @classmethod
    def for_run_dir(cls, run_dir: str | None, *, infer: str | None = None, prepared: str | None = None,
                    model: str | None = None, out: str | None = None) -> ReportPaths:  # fmt: skip
        """Explicit paths win; the others default to RUN_DIR/{infer,prepared,model,report}, the
        layout ``segops demo RUN_DIR`` makes."""

        def pick(explicit: str | None, key: str) -> str | None:
            if explicit:
                return explicit
            return os.path.join(run_dir, key) if run_dir else None

        infer_dir, out_dir = pick(infer, layout.RUN_INFER_DIR), pick(out, layout.REPORT_DIR)
        if infer_dir is None or out_dir is None:
            raise ReportError("give RUN_DIR, or both --infer and --out")
        return cls(infer=infer_dir, out=out_dir, prepared=pick(prepared, layout.RUN_PREPARED_DIR),
                   model=pick(model, layout.RUN_MODEL_DIR))  # fmt: skip


@dataclass
class RunData:
    paths: ReportPaths
    summary: dict[str, Any]
    rows: list[dict[str, Any]]  # results rows of summary["model_id"], sorted by rel_path
    infer_manifest: dict[str, Any] | None
    stats: dict[str, Any] | None
    class_weights: dict[str, Any] | None
    history: list[dict[str, Any]] | None
    train_summary: dict[str, Any] | None  # the train run's model.json
    notes: list[str] = field(default_factory=list)
    label_set: LabelSet = field(default_factory=cityscapes)  # the results table's

    @property
    def model_id(self) -> str:
        return self.summary["model_id"]

    @property
    def has_crf(self) -> bool:
        return self.summary.get("after_crf") is not None

    def stage(self, key: str) -> dict[str, Any] | None:
        """summary["before_crf"] / ["after_crf"]."""
        return self.summary.get(key)


ROW_COLUMNS = (
    "path", "rel_path", "label_path", "model_id", "has_labels", "crf", "mean_confidence", "crf_changed_fraction",
    "mean_iou_before", "mean_iou_after", "pixel_accuracy_before", "pixel_accuracy_after",
)  # fmt: skip


def results_label_set(infer_dir: str) -> LabelSet:
    """The label set of the run's results table (Cityscapes when there is none)."""
    from segops.inference.table import TableError, open_table, table_label_set

    try:
        return table_label_set(open_table(infer_dir))
    except TableError:
        return cityscapes()


def read_rows(infer_dir: str, model_id: str) -> list[dict[str, Any]]:
    """The results rows of ``model_id`` (only :data:`ROW_COLUMNS`), sorted by rel_path.

    The one place the report reads infer's results table.
    """
    from segops.inference.table import read_metrics

    # this model's rows only, filtered in the scan; not the confusion lists: archives are big
    rows = read_metrics(infer_dir, list(ROW_COLUMNS), model_id=model_id).to_pylist()
    rows.sort(key=lambda r: r["rel_path"])
    return rows


def _train_dir_candidates(paths: ReportPaths, manifest: dict[str, Any] | None) -> list[str]:
    """Where history.json may be: --model, else the model infer used (an export dir's parent too)."""
    out = [paths.model] if paths.model else []
    model_dir = (manifest or {}).get("model_dir")
    if model_dir:
        out += [model_dir, os.path.dirname(os.path.normpath(model_dir))]
    return out


def load_run(paths: ReportPaths) -> RunData:
    summary = fs.read_json_or_none(fs.join(paths.infer, layout.SUMMARY_FILE))
    if summary is None:
        raise ReportError(f"{paths.infer} has no {layout.SUMMARY_FILE}: run `segops infer` first (or pass --infer)")
    rows = read_rows(paths.infer, summary["model_id"])
    manifest = fs.read_json_or_none(fs.join(paths.infer, layout.MANIFEST_FILE))
    data = RunData(paths, summary, rows, manifest, None, None, None, None)
    data.label_set = results_label_set(paths.infer)
    if paths.prepared:
        data.stats = fs.read_json_or_none(fs.join(paths.prepared, layout.STATS_FILE))
        data.class_weights = fs.read_json_or_none(fs.join(paths.prepared, layout.CLASS_WEIGHTS_FILE))
    if data.stats is None:
        data.notes.append(f"no prepare output ({layout.STATS_FILE}, {layout.CLASS_WEIGHTS_FILE}): "
                          "class frequency and weights left out")  # fmt: skip
    for candidate in _train_dir_candidates(paths, manifest):
        history = fs.read_json_or_none(fs.join(candidate, layout.HISTORY_JSON))
        if history:
            data.history = history
            data.train_summary = fs.read_json_or_none(fs.join(candidate, layout.MODEL_JSON))
            break
    if data.history is None:
        data.notes.append(f"no training history ({layout.HISTORY_JSON}): training curves left out")
    return data
