"""`segops review select`: which images a person should check, picked from the results table of
`segops infer` by rules a user combines (:class:`SelectOptions`), reproducibly and with a cap.

Each rule ranks the model's rows and proposes its top N; the selection is the union in rule
order (a ranking file's highest scores, lowest confidence, largest CRF change, rare classes,
lowest mIoU, then the random audit sample drawn with ``seed`` from the rows no other rule
picked), cut at ``cap``. A ranking file is any Parquet with ``path`` and ``score`` columns, such
as `segops compare`'s per-image table (score = changed pixel fraction): the reviewers see the
images the new model changed most first. Every selected
row says which rules picked it. Ties break on ``path`` so the same table gives the same
selection. The selection is a small Parquet table (:func:`write_selection`) that `review export`
reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segops.core import fs, labels, layout
from segops.core.options import FlatOptions, OptionsError, flag
from segops.inference import table
from segops.review import ReviewError

RULES = ("ranked", "lowest_confidence", "largest_crf_change", "rare_classes", "lowest_miou", "random")
DEFAULT_CAP = 100
SCORE_COLUMNS = ("mean_confidence", "crf_changed_fraction", "mean_iou_before", "mean_iou_after")
READ_COLUMNS = ("path", "rel_path", "label_path", "height", "width", "model_id", "has_labels", *SCORE_COLUMNS)


def _count(help: str) -> dict[str, Any]:
    """The flag of a rule: how many images it proposes (0: off)."""
    return flag(help, low=0, metavar="N")


class SelectError(ReviewError, OptionsError):
    """A selection that cannot be made as asked (bad counts, several models, unknown class)."""


@dataclass(frozen=True)
class SelectOptions(FlatOptions):
    """How many images each rule proposes (0 = rule off), the classes of ``rare_classes``, the
    overall cap and the seed of the random sample."""

    ranked: int = field(default=0, metadata=_count(
        "The images with the highest score in the --ranking FILE (e.g. the most changed)."))
    ranking: str | None = field(default=None, metadata=flag(  # a Parquet with ``path`` and ``score``
        "A Parquet with path and score columns, e.g. `segops compare`'s compare_OLD_NEW.parquet (its model is "
        "the default --model-id).", metavar="FILE"))
    lowest_confidence: int = field(default=0, metadata=_count(
        "Images with the lowest mean confidence (top softmax probability)."))
    largest_crf_change: int = field(default=0, metadata=_count(
        "Images where the CRF relabelled the largest fraction of pixels."))
    rare_classes: int = field(default=0, metadata=_count(
        "Images showing the most pixels of a --class (in the written mask)."))
    classes: tuple[str, ...] = field(default=(), metadata=flag(
        "A class for --rare-classes (repeatable), e.g. --class train.", opt="--class", metavar="NAME", multiple=True))
    min_class_pixels: int = field(default=1, metadata=flag(
        "Pixels of a --class an image needs to count as showing it.", low=1))
    lowest_miou: int = field(default=0, metadata=_count(
        "Images with the lowest per-image mIoU (those with ground truth)."))
    random: int = field(default=0, metadata=_count(
        "A random audit sample of the images no other rule picked (seeded)."))
    cap: int = field(default=DEFAULT_CAP, metadata=flag(
        "At most this many images in all (rules fill it in the order above).", low=1))
    seed: int = field(default=0, metadata=flag("Seed of --random."))
    model_id: str | None = field(default=None, metadata=flag(  # None: the table's only model
        "The model whose rows to use (needed when the table holds several)."))

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        counts = [getattr(self, r) for r in RULES]
        if any(n < 0 for n in counts) or self.cap < 1 or self.min_class_pixels < 1:
            raise SelectError("rule counts must be >= 0, --cap and --min-class-pixels >= 1")
        if not any(counts):
            raise SelectError("no rule chosen: give at least one of " + ", ".join(f"--{r.replace('_', '-')} N" for r in RULES))
        if bool(self.ranked) != bool(self.ranking):
            raise SelectError("--ranked N and --ranking FILE go together: the top N of the ranking FILE")
        if self.rare_classes and not self.classes:
            raise SelectError("--rare-classes N needs the classes to look for (--class NAME, repeatable)")


def selection_path(infer_out: str) -> str:
    """Where `review select` writes the selection of an infer OUT by default."""
    return fs.join(infer_out, layout.REVIEW_DIR, layout.REVIEW_SELECTION_FILE)


def _only_model(infer_out: str, model_id: str | None) -> str:
    models = sorted(set(table.read_metrics(infer_out, columns=["model_id"]).column("model_id").to_pylist()))
    if not models:
        raise SelectError(f"the results table of {infer_out} has no rows: run `segops infer` first")
    if model_id is None:
        if len(models) > 1:
            raise SelectError(f"the results table holds {len(models)} models; choose one with --model-id: {', '.join(models)}")
        return models[0]
    if model_id not in models:
        raise SelectError(f"model {model_id!r} has no rows; the table holds: {', '.join(models)}")
    return model_id


def read_ranking(path: str) -> tuple[dict[str, float], list[str]]:
    """A ranking file's ``path`` -> ``score`` (rows without a score left out) and the models
    of its ``model_id`` column (none when it has no such column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not fs.exists(path):
        raise SelectError(f"no ranking file at {path}")
    ranking = pq.read_table(pa.BufferReader(fs.read_bytes(path)))
    missing = {"path", "score"} - set(ranking.column_names)
    if missing:
        raise SelectError(f"the ranking {path} has no {' or '.join(sorted(missing))} column (it needs path and score)")
    scores = {p: float(s) for p, s in zip(ranking.column("path").to_pylist(), ranking.column("score").to_pylist(), strict=True)
              if p is not None and s is not None and not np.isnan(s)}  # fmt: skip
    models = sorted(set(ranking.column("model_id").to_pylist()) - {None}) if "model_id" in ranking.column_names else []
    return scores, models


def _top(order_key: np.ndarray, valid: np.ndarray, paths: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` valid rows with the smallest ``order_key`` (ties: path)."""
    idx = np.flatnonzero(valid)
    ranked = idx[np.lexsort((paths[idx], order_key[idx]))]
    return [int(i) for i in ranked[:n]]


def _floats(rows: Any, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in rows.column(name).to_pylist()], dtype=np.float64)


def check_classes(classes: tuple[str, ...], class_names: tuple[str, ...]) -> None:
    """SelectError naming the ``classes`` that are not among the table's ``class_names``."""
    unknown = [c for c in classes if c not in class_names]
    if unknown:
        raise SelectError(f"unknown class name(s) {', '.join(map(repr, unknown))}; classes: {', '.join(class_names)}")


def rare_class_pixels(class_pixels: list[list[int] | None], classes: tuple[str, ...],
                      class_names: tuple[str, ...] = labels.CLASS_NAMES) -> np.ndarray:  # fmt: skip
    """Per row, the largest pixel count among ``classes`` (0 for rows without class counts)."""
    ids = [class_names.index(c) for c in classes]
    return np.array([max((counts[i] for i in ids), default=0) if counts else 0 for counts in class_pixels], np.int64)


def select(infer_out: str, options: SelectOptions) -> Any:
    """The selection as a pyarrow Table: the table's columns of :data:`READ_COLUMNS`, plus
    ``rank`` (0-based order of the selection) and ``reasons`` (the rules that picked the row)."""
    import pyarrow as pa

    ranking, ranking_models = read_ranking(options.ranking) if options.ranking else ({}, [])
    model_id = options.model_id
    if model_id is None and len(ranking_models) == 1:
        model_id = ranking_models[0]  # the model the ranking is about (`segops compare`'s new model)
    model_id = _only_model(infer_out, model_id)
    class_names = table.table_label_set(table.open_table(infer_out)).class_names if options.classes else ()
    check_classes(options.classes, class_names)
    columns = list(READ_COLUMNS) + (["class_pixels"] if options.rare_classes else [])
    rows = table.read_metrics(infer_out, columns=columns, model_id=model_id)
    paths = np.array(rows.column("path").to_pylist(), dtype=object)
    candidates: dict[str, list[int]] = {}
    if options.ranked:
        score = np.array([ranking.get(p, np.nan) for p in paths], dtype=np.float64)
        candidates["ranked"] = _top(-score, ~np.isnan(score), paths, options.ranked)
    if options.lowest_confidence:
        conf = _floats(rows, "mean_confidence")
        candidates["lowest_confidence"] = _top(conf, ~np.isnan(conf), paths, options.lowest_confidence)
    if options.largest_crf_change:
        change = _floats(rows, "crf_changed_fraction")
        candidates["largest_crf_change"] = _top(-change, ~np.isnan(change), paths, options.largest_crf_change)
    if options.rare_classes:
        rare = rare_class_pixels(rows.column("class_pixels").to_pylist(), options.classes, class_names)
        candidates["rare_classes"] = _top(-rare, rare >= options.min_class_pixels, paths, options.rare_classes)
    if options.lowest_miou:
        after, before = _floats(rows, "mean_iou_after"), _floats(rows, "mean_iou_before")
        miou = np.where(np.isnan(after), before, after)  # the written mask's score
        candidates["lowest_miou"] = _top(miou, ~np.isnan(miou), paths, options.lowest_miou)
    picked: dict[int, list[str]] = {}
    for rule, indices in candidates.items():
        for i in indices:
            picked.setdefault(i, []).append(rule)
    if options.random:
        rest = np.array(sorted(set(range(rows.num_rows)) - set(picked), key=lambda i: paths[i]), dtype=np.int64)
        rng = np.random.default_rng(options.seed)
        for i in rng.permutation(rest)[: options.random]:
            picked[int(i)] = ["random"]
    order = list(picked)[: options.cap]
    out = rows.select(list(READ_COLUMNS)).take(pa.array(order, type=pa.int64()))
    out = out.append_column("rank", pa.array(range(len(order)), type=pa.int32()))
    return out.append_column("reasons", pa.array([",".join(picked[i]) for i in order], type=pa.string()))


def write_selection(selection: Any, path: str) -> None:
    """The selection as one Parquet file, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(selection, sink)
    fs.write_bytes_atomic(path, sink.getvalue().to_pybytes())


def read_selection(path: str) -> Any:
    """A selection written by :func:`write_selection` (a pyarrow Table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not fs.exists(path):
        raise SelectError(f"no selection at {path}: run `segops review select` first (or pass --selection)")
    return pq.read_table(pa.BufferReader(fs.read_bytes(path)))


def format_selection(selection: Any) -> str:
    """The selection as a text table: rank, reasons, scores, relative path."""
    from segops.core.formatting import fmt_score

    lines = [f"{'#':>3}  {'reasons':<34}{'conf':>7}{'crf Δ':>7}{'mIoU':>7}  image"]
    for row in selection.to_pylist():
        miou = row["mean_iou_after"] if row["mean_iou_after"] is not None else row["mean_iou_before"]
        lines.append(f"{row['rank']:>3}  {row['reasons']:<34}{fmt_score(row['mean_confidence'], missing='-'):>7}"
                     f"{fmt_score(row['crf_changed_fraction'], missing='-'):>7}{fmt_score(miou, missing='-'):>7}  "
                     f"{row['rel_path']}")  # fmt: skip
    return "\n".join(lines)
