"""The quality report of a run: matplotlib plots (Agg) and one self-contained ``report.html``.

``build_report(ReportPaths(...))`` reads the outputs of the stages (nothing else) and writes::

    OUT/class_iou.png          dataset IoU per class, before and after the CRF (summary.json)
    OUT/confusion_matrix.png   confusion matrix normalised per ground-truth row (summary.json)
    OUT/class_frequency.png    pixel share of every class per split (prepare's stats.json)
    OUT/class_weights.png      class weights of every scheme (prepare's class_weights.json)
    OUT/training_curves.png    loss / val loss and val mIoU per epoch (train's history.json)
    OUT/per_image_miou.png     distribution of per-image mIoU, before and after the CRF (Parquet)
    OUT/gallery_best.png       best and worst images: image | ground truth | prediction | CRF
    OUT/gallery_worst.png
    OUT/report.html            all of the above, PNGs embedded as base64 data: URIs, plus tables

Sections whose input is missing (no prepared dir, no history, no ground truth) are left out of
the HTML with a note, so the report works on any ``segops infer`` output. The gallery's
"prediction" column is the model's argmax before the CRF: infer keeps only the final (CRF) masks
on disk, so the report recomputes it for the few gallery images with the same export and the
same tiling options as the infer run, and shows the recomputed score next to the Parquet one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segops.core import fs, imageio, labels, layout, metrics

if TYPE_CHECKING:
    from segops.inference.model import Predictor

LOG = logging.getLogger(__name__)

PLOT_NAMES = (
    "class_iou",
    "confusion_matrix",
    "class_frequency",
    "class_weights",
    "training_curves",
    "per_image_miou",
    "gallery_best",
    "gallery_worst",
)
HTML_FILE = "report.html"


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

        infer_dir, out_dir = pick(infer, "infer"), pick(out, "report")
        if infer_dir is None or out_dir is None:
            raise ReportError("give RUN_DIR, or both --infer and --out")
        return cls(infer=infer_dir, out=out_dir, prepared=pick(prepared, "prepared"), model=pick(model, "model"))


# --------------------------------------------------------------------------------------------
# reading the stages' outputs


def _read_json(path: str) -> Any | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


@dataclass
class RunData:
    paths: ReportPaths
    summary: dict[str, Any]
    rows: list[dict[str, Any]]  # results-table rows of summary["model_id"], sorted by rel_path
    infer_manifest: dict[str, Any] | None
    stats: dict[str, Any] | None
    class_weights: dict[str, Any] | None
    history: list[dict[str, Any]] | None
    train_summary: dict[str, Any] | None  # the train run's model.json
    notes: list[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        return self.summary["model_id"]

    @property
    def has_crf(self) -> bool:
        return self.summary.get("after_crf") is not None

    def stage(self, key: str) -> dict[str, Any] | None:
        """summary["before_crf"] / ["after_crf"]."""
        return self.summary.get(key)


def _train_dir_candidates(paths: ReportPaths, manifest: dict[str, Any] | None) -> list[str]:
    """Where history.json may be: --model, else the model infer used (an export dir's parent too)."""
    out = [paths.model] if paths.model else []
    model_dir = (manifest or {}).get("model_dir")
    if model_dir:
        out += [model_dir, os.path.dirname(os.path.normpath(model_dir))]
    return out


ROW_COLUMNS = (
    "path", "rel_path", "label_path", "model_id", "has_labels", "crf", "mean_confidence", "crf_changed_fraction",
    "mean_iou_before", "mean_iou_after", "pixel_accuracy_before", "pixel_accuracy_after",
)  # fmt: skip


def load_run(paths: ReportPaths) -> RunData:
    from segops.inference.table import read_metrics

    summary = _read_json(os.path.join(paths.infer, layout.SUMMARY_FILE))
    if summary is None:
        raise ReportError(f"{paths.infer} has no {layout.SUMMARY_FILE}: run `segops infer` first (or pass --infer)")
    table = read_metrics(paths.infer, list(ROW_COLUMNS))  # not the confusion lists: archives are big
    rows = [r for r in table.to_pylist() if r["model_id"] == summary["model_id"]]
    rows.sort(key=lambda r: r["rel_path"])
    manifest = _read_json(os.path.join(paths.infer, layout.MANIFEST_FILE))
    data = RunData(paths, summary, rows, manifest, None, None, None, None)
    if paths.prepared:
        data.stats = _read_json(os.path.join(paths.prepared, "stats.json"))
        data.class_weights = _read_json(os.path.join(paths.prepared, "class_weights.json"))
    if data.stats is None:
        data.notes.append("no prepare output (stats.json, class_weights.json): class frequency and weights left out")
    for candidate in _train_dir_candidates(paths, manifest):
        history = _read_json(os.path.join(candidate, "history.json"))
        if history:
            data.history = history
            data.train_summary = _read_json(os.path.join(candidate, "model.json"))
            break
    if data.history is None:
        data.notes.append("no training history (history.json): training curves left out")
    return data


# --------------------------------------------------------------------------------------------
# numbers


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
        out["majority_class"] = labels.CLASS_NAMES[m]
        out["majority_class_source"] = source
        out["majority_baseline_miou"] = majority_baseline(np.asarray(before["confusion_matrix"]), m)
    if data.history:
        best = max((r for r in data.history if r.get("val_mean_iou") is not None),
                   key=lambda r: r["val_mean_iou"], default=None)  # fmt: skip
        out["epochs_trained"] = data.history[-1]["epoch"]
        if best:
            out["best_epoch"], out["best_val_miou_training"] = best["epoch"], best["val_mean_iou"]
    return out


def fmt(value: float | None, digits: int = 4) -> str:
    """How every number appears in the report: fixed decimals, '–' for no score."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


# --------------------------------------------------------------------------------------------
# plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


_SPLIT_COLORS = ("#1f4e79", "#9bb7d4", "#c0504d", "#8e8e8e")


def _class_colors() -> list[tuple[float, float, float]]:
    return [tuple(c / 255 for c in labels.TRAIN_ID_TO_COLOR[i]) for i in range(labels.NUM_CLASSES)]


def _nan(values: list[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_class_iou(data: RunData) -> bytes | None:
    before, after = data.stage("before_crf"), data.stage("after_crf")
    if not before:
        return None
    plt = _pyplot()
    names = list(labels.CLASS_NAMES)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 7))
    b = _nan([before["dataset_iou"][n] for n in names])
    ax.barh(y - 0.2, np.nan_to_num(b), height=0.4, color="#9bb7d4", label=f"model (mIoU {fmt(before['dataset_miou'])})")
    if after:
        a = _nan([after["dataset_iou"][n] for n in names])
        ax.barh(y + 0.2, np.nan_to_num(a), height=0.4, color="#1f4e79", label=f"+ CRF (mIoU {fmt(after['dataset_miou'])})")
    for i in np.flatnonzero(np.isnan(b)):
        ax.text(0.01, y[i], "no score", va="center", fontsize=8, color="gray")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("dataset IoU (summed confusion matrix)")
    ax.set_title(f"Per-class IoU on {before['images']} labelled image(s)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    return _png(fig)


def plot_confusion(data: RunData) -> bytes | None:
    key = "after_crf" if data.has_crf else "before_crf"
    stage = data.stage(key)
    if not stage:
        return None
    plt = _pyplot()
    cm = np.asarray(stage["confusion_matrix"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, cm / rows, np.nan)
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = list(labels.CLASS_NAMES)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    for i, j in zip(*np.nonzero(norm >= 0.01), strict=True):
        ax.text(j, i, f"{norm[i, j]:.2f}"[1:] if norm[i, j] < 1 else "1", ha="center", va="center", fontsize=6,
                color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(f"Confusion matrix {'after' if key == 'after_crf' else 'before'} CRF, normalised per ground-truth row")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row's pixels")
    return _png(fig)


def plot_class_frequency(data: RunData) -> bytes | None:
    splits = {s: v for s, v in (data.stats or {}).get("splits", {}).items() if v.get("labelled_pixels", 0) > 0}
    if not splits:
        return None
    plt = _pyplot()
    names = list(labels.CLASS_NAMES)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(splits)
    for k, (split, v) in enumerate(splits.items()):
        share = np.asarray(v["pixel_counts"], dtype=np.float64) / v["labelled_pixels"]
        ax.bar(x - 0.4 + width * (k + 0.5), share * 100, width=width, label=f"{split} ({v['images']} images)",
               color=_SPLIT_COLORS[k % len(_SPLIT_COLORS)])  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylabel("% of labelled pixels (log scale)")
    ax.set_title("Class frequencies (prepare: stats.json)")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def plot_class_weights(data: RunData) -> bytes | None:
    cw = data.class_weights
    if not cw or not cw.get("schemes"):
        return None
    plt = _pyplot()
    names = list(labels.CLASS_NAMES)
    x = np.arange(len(names))
    schemes = cw["schemes"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(schemes)
    for k, (scheme, weights) in enumerate(schemes.items()):
        label = scheme + (" (default)" if scheme == cw.get("default_scheme") else "")
        ax.bar(x - 0.4 + width * (k + 0.5), weights, width=width, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylabel("class weight (log scale)")
    ax.set_title(f"Class weights from the {cw.get('source_split', '?')} split (prepare: class_weights.json)")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def plot_training(data: RunData, baseline: float | None) -> bytes | None:
    if not data.history:
        return None
    plt = _pyplot()
    epochs = [r["epoch"] for r in data.history]

    def series(key: str) -> np.ndarray:
        return _nan([r.get(key) for r in data.history])

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, series("loss"), "o-", label="train loss")
    ax1.plot(epochs, series("val_loss"), "o-", label="val loss")
    ax1.set_yscale("log")  # the first epochs' val loss would flatten everything else
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (log scale)")
    ax1.set_title("Loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    val = series("val_mean_iou")
    ax2.plot(epochs, val, "o-", color="#1f4e79", label="val mIoU")
    if not np.all(np.isnan(series("mean_iou"))):
        ax2.plot(epochs, series("mean_iou"), "o--", color="#9bb7d4", label="train mIoU (augmented crops)")
    if not np.all(np.isnan(val)):
        best = int(np.nanargmax(val))
        ax2.plot([epochs[best]], [val[best]], "*", markersize=14, color="orange", label=f"best: epoch {epochs[best]}")
    if baseline is not None:
        ax2.axhline(baseline, color="gray", linestyle=":", label="majority-class baseline")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("mIoU")
    ax2.set_ylim(bottom=0)
    ax2.set_title("Validation mIoU")
    ax2.legend(loc="upper left")
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _png(fig)


def _per_image(data: RunData, stage: str) -> np.ndarray:
    values = [r[f"mean_iou_{stage}"] for r in data.rows if r["has_labels"]]
    return _nan(values)


def plot_per_image(data: RunData) -> bytes | None:
    before = _per_image(data, "before")
    if before.size == 0 or np.all(np.isnan(before)):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(0, 1, 21)
    ax.hist(before[~np.isnan(before)], bins=bins, histtype="stepfilled", alpha=0.5, color="#9bb7d4",
            label=f"model (mean {fmt(float(np.nanmean(before)))})")  # fmt: skip
    if data.has_crf:
        after = _per_image(data, "after")
        ax.hist(after[~np.isnan(after)], bins=bins, histtype="step", linewidth=2, color="#1f4e79",
                label=f"+ CRF (mean {fmt(float(np.nanmean(after)))})")  # fmt: skip
    ax.set_xlabel("per-image mIoU")
    ax.set_ylabel("images")
    ax.set_title(f"Distribution of per-image mIoU ({before.size} labelled images)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# gallery


@dataclass
class GalleryItem:
    row: dict[str, Any]
    image: np.ndarray | None = None
    gt: np.ndarray | None = None  # trainIds
    pred: np.ndarray | None = None  # model argmax (recomputed), trainIds
    crf: np.ndarray | None = None  # the mask infer wrote, trainIds
    pred_miou: float | None = None  # of ``pred``: should equal row["mean_iou_before"]
    mask_miou: float | None = None  # of ``crf``: should equal row["mean_iou_after"] (or _before)
    problems: list[str] = field(default_factory=list)


def score_of(row: dict[str, Any]) -> float | None:
    """Gallery ranking: per-image mIoU of the final masks (after the CRF when there is one)."""
    value = row.get("mean_iou_after") if row.get("crf") else row.get("mean_iou_before")
    return None if value is None or math.isnan(value) else float(value)


def select_gallery(rows: list[dict[str, Any]], k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``k`` best and ``k`` worst labelled images (disjoint; ties by path, so deterministic)."""
    scored = sorted((r for r in rows if score_of(r) is not None), key=lambda r: (-score_of(r), r["rel_path"]))
    n_best = min(k, (len(scored) + 1) // 2)  # fewer than 2k images: split them between the two
    best = scored[:n_best]
    worst = [r for r in reversed(scored[n_best:])][:k]
    return best, worst


def _miou(gt: np.ndarray, pred: np.ndarray) -> float | None:
    value = metrics.mean_iou(metrics.confusion_matrix(gt, pred))
    return None if math.isnan(value) else value


def make_predictor(data: RunData) -> Predictor:
    """The run's own predictions (its recorded tiling and batching) for the gallery."""
    from segops.inference.model import Predictor
    from segops.inference.options import PredictOptions

    manifest = data.infer_manifest or {}
    candidates = [c for c in (data.paths.model, manifest.get("model_dir")) if c]
    return Predictor(data.model_id, candidates, PredictOptions.from_record(manifest.get("options")))


def load_gallery(data: RunData, rows: list[dict[str, Any]], predictor: Predictor | None) -> list[GalleryItem]:
    from segops.inference.discovery import WorkItem
    from segops.inference.examples import load_example
    from segops.inference.masks import mask_paths

    max_pixels = int(((data.infer_manifest or {}).get("options") or {}).get("max_pixels", imageio.DEFAULT_MAX_PIXELS))
    items = []
    for row in rows:
        item = GalleryItem(row)
        work = WorkItem(row["path"], row["rel_path"], row["label_path"])
        try:  # infer's own loader: same checks (size match, known label ids) as the run had
            example = load_example(work, max_pixels)
            item.image, item.gt = example.rgb, example.gt
        except (OSError, imageio.BadInput) as exc:
            item.problems.append(f"cannot read the image or its ground truth: {exc}")
            items.append(item)
            continue
        mask_path = mask_paths(data.paths.infer, work)["trainIds"]
        try:
            item.crf = imageio.decode_label_png(fs.read_bytes(mask_path))
            item.mask_miou = _miou(item.gt, item.crf)
        except (OSError, imageio.BadInput) as exc:
            item.problems.append(f"mask {mask_path} unreadable: {exc}")
        if predictor is not None and row.get("crf"):
            item.pred = predictor(item.image)
            if item.pred is not None:
                item.pred_miou = _miou(item.gt, item.pred)
            else:
                item.problems.append(f"prediction before the CRF not shown: {predictor.reason}")
        if not row.get("crf"):  # --no-crf run: the mask on disk *is* the prediction
            item.pred, item.pred_miou, item.crf = item.crf, item.mask_miou, None
        items.append(item)
    return items


def plot_gallery(items: list[GalleryItem], title: str) -> bytes | None:
    if not items:
        return None
    plt = _pyplot()
    from matplotlib.patches import Patch

    h, w = next((it.image.shape[:2] for it in items if it.image is not None), (256, 512))
    panel_w = 3.2
    panel_h = panel_w * h / w
    fig, axes = plt.subplots(len(items), 4, figsize=(4 * panel_w, len(items) * (panel_h + 0.45) + 0.9),
                             squeeze=False)  # fmt: skip
    for r, it in enumerate(items):
        row = it.row
        panels = [
            ("image", it.image),
            ("ground truth", None if it.gt is None else labels.colorize(it.gt)),
            (f"prediction  mIoU {fmt(row.get('mean_iou_before'), 3)}", None if it.pred is None else labels.colorize(it.pred)),
            (f"CRF  mIoU {fmt(row.get('mean_iou_after'), 3)}", None if it.crf is None else labels.colorize(it.crf)),
        ]
        for c, (label, img) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes, color="gray")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_title(label if c else f"{row['rel_path']}", fontsize=8, loc="left" if c == 0 else "center")
    present = sorted({int(v) for it in items for m in (it.gt, it.pred, it.crf) if m is not None
                      for v in np.unique(m) if v < labels.NUM_CLASSES})  # fmt: skip
    colors = _class_colors()
    handles = [Patch(facecolor=colors[i], edgecolor="black", label=labels.CLASS_NAMES[i]) for i in present]
    handles.append(Patch(facecolor="black", label="ignore"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=7, frameon=False)
    fig.suptitle(title, y=1.0)
    fig.tight_layout(rect=(0, 0.04, 1, 0.98))
    return _png(fig)


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f5f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee} .note{color:#777;font-size:.9em}
.headline td:first-child{font-weight:600} code{background:#f3f3f3;padding:1px 4px}
"""


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img id="img-{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _table(table_id: str, header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{html.escape(v)}</td>' if i >= numeric_from else f"<td>{html.escape(v)}</td>"
            for i, v in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(data: RunData, head: dict[str, Any], plots: dict[str, bytes],
                gallery: dict[str, list[GalleryItem]]) -> str:  # fmt: skip
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>segops report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>segops quality report</h1>",
        f'<p class="note">model <code>{esc(data.model_id)}</code>; infer output <code>{esc(os.path.abspath(data.paths.infer))}</code>'
        f"; this file is self-contained (every plot is embedded), the same plots are PNG files next to it.</p>",
    ]
    before, after = data.stage("before_crf"), data.stage("after_crf")
    rows = [["images in the table", str(head["images"])], ["with ground truth", str(head["labelled_images"])]]
    if before:
        rows += [
            ["dataset mIoU, model", fmt(head["miou_before_crf"])],
            ["dataset mIoU, + CRF", fmt(head["miou_after_crf"])],
            ["mean of per-image mIoU, model", fmt(head["mean_per_image_miou_before_crf"])],
            ["mean of per-image mIoU, + CRF", fmt(head["mean_per_image_miou_after_crf"])],
            ["pixel accuracy, model", fmt(head["pixel_accuracy_before_crf"])],
            ["pixel accuracy, + CRF", fmt(head["pixel_accuracy_after_crf"])],
            [f"majority-class baseline mIoU (always '{head['majority_class']}', the most frequent class of the "
             f"{head['majority_class_source']})", fmt(head["majority_baseline_miou"])],
        ]  # fmt: skip
    if "best_val_miou_training" in head:
        rows.append([f"best val mIoU during training (epoch {head['best_epoch']} of {head['epochs_trained']})",
                     fmt(head["best_val_miou_training"])])  # fmt: skip
    parts += ["<h2 id='sec-headline'>Headline</h2>", _table("headline", ["", "value"], rows).replace("<table", "<table class='headline'", 1)]
    parts.append(
        '<p class="note">Dataset mIoU: per-class IoU from the confusion matrix summed over all labelled images '
        "(the Cityscapes definition), averaged over classes with a score. Mean of per-image mIoU: the average "
        "of each image's own mIoU, a different number. A class in neither ground truth nor prediction has no "
        "score (–).</p>"
    )
    if not before:
        parts.append('<p class="note">No ground truth was found for these images: masks and confidence only.</p>')
    parts.append("<h2 id='sec-class-iou'>Per-class IoU, before and after the CRF</h2>")
    if "class_iou" in plots:
        parts.append(_img("class_iou", plots["class_iou"], "per-class IoU before and after CRF"))
        table_rows = [
            [name, fmt(before["dataset_iou"][name]), fmt(after["dataset_iou"][name] if after else None),
             fmt(before["dataset_dice"][name]), fmt(after["dataset_dice"][name] if after else None)]
            for name in labels.CLASS_NAMES
        ]  # fmt: skip
        table_rows.append(["mean", fmt(before["dataset_miou"]), fmt(after["dataset_miou"] if after else None),
                           fmt(before["dataset_mdice"]), fmt(after["dataset_mdice"] if after else None)])  # fmt: skip
        parts.append(_table("class-iou-table", ["class", "IoU model", "IoU + CRF", "Dice model", "Dice + CRF"], table_rows))
    if "confusion_matrix" in plots:
        parts += ["<h2 id='sec-confusion'>Confusion matrix</h2>", _img("confusion_matrix", plots["confusion_matrix"], "confusion matrix")]
    if "per_image_miou" in plots:
        parts += ["<h2 id='sec-per-image'>Per-image mIoU</h2>", _img("per_image_miou", plots["per_image_miou"], "per-image mIoU")]
    for key, title in (("gallery_best", "Best images"), ("gallery_worst", "Worst images")):
        items = gallery.get(key, [])
        if not items:
            continue
        parts += [f"<h2 id='sec-{key}'>{title}</h2>", _img(key, plots[key], title)]
        trs = []
        for it in items:
            r = it.row
            trs.append([r["rel_path"], fmt(r.get("mean_iou_before")), fmt(r.get("mean_iou_after")),
                        fmt(r.get("pixel_accuracy_before")), fmt(r.get("pixel_accuracy_after")),
                        fmt(r.get("crf_changed_fraction")), fmt(r.get("mean_confidence"))])  # fmt: skip
        parts.append(_table(f"{key}-table", ["image", "mIoU model", "mIoU + CRF", "pixel acc. model",
                                             "pixel acc. + CRF", "CRF changed", "mean confidence"], trs))  # fmt: skip
        problems = [f"{it.row['rel_path']}: {p}" for it in items for p in it.problems]
        problems += [
            f"{it.row['rel_path']}: recomputed prediction scores {fmt(it.pred_miou)}, the table says "
            f"{fmt(it.row.get('mean_iou_before'))}"
            for it in items
            if it.row.get("crf") and it.pred_miou is not None and it.row.get("mean_iou_before") is not None
            and abs(it.pred_miou - it.row["mean_iou_before"]) > 1e-3
        ]
        parts += [f'<p class="note">{esc(p)}</p>' for p in problems]
    parts.append(
        '<p class="note">Columns: the input image, its ground truth, the model\'s argmax (recomputed for these '
        "images with the same export and tiling as the infer run) and the CRF-refined mask infer wrote. Black is "
        "ignore.</p>"
    )
    if "class_frequency" in plots or "class_weights" in plots:
        parts.append("<h2 id='sec-classes'>Class frequencies and weights (prepare)</h2>")
        if "class_frequency" in plots:
            parts.append(_img("class_frequency", plots["class_frequency"], "class frequency"))
        if "class_weights" in plots:
            parts.append(_img("class_weights", plots["class_weights"], "class weights"))
            cw = data.class_weights or {}
            schemes = list(cw.get("schemes", {}))
            share = _train_share(data)
            trs = [[name, fmt(share[i] * 100 if share is not None else None, 3)]
                   + [fmt(cw["schemes"][s][i]) for s in schemes] for i, name in enumerate(labels.CLASS_NAMES)]  # fmt: skip
            parts.append(_table("class-weights-table", ["class", f"% of {cw.get('source_split', '?')} pixels", *schemes], trs))
    if "training_curves" in plots:
        parts += ["<h2 id='sec-training'>Training</h2>", _img("training_curves", plots["training_curves"], "training curves")]
        training = (data.train_summary or {}).get("training", {})
        keys = ("model", "depth", "base_filters", "epochs", "epochs_trained", "batch_size", "crop", "scale_range",
                "optimizer", "lr", "lr_schedule", "loss", "class_weights", "weight_maps", "precision_used")
        if training:
            parts.append(_table("training-options", ["option", "value"],
                                [[k, json.dumps(training[k])] for k in keys if k in training]))  # fmt: skip
    for note in data.notes:
        parts.append(f'<p class="note">{esc(note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _train_share(data: RunData) -> np.ndarray | None:
    cw, stats = data.class_weights or {}, data.stats or {}
    split = stats.get("splits", {}).get(cw.get("source_split", "train"))
    if not split or not split.get("labelled_pixels"):
        return None
    return np.asarray(split["pixel_counts"], dtype=np.float64) / split["labelled_pixels"]


# --------------------------------------------------------------------------------------------
# entry point


@dataclass
class ReportResult:
    html: str
    plots: dict[str, str]  # name -> PNG path
    headline: dict[str, Any]
    notes: list[str]


def build_report(paths: ReportPaths, gallery_size: int = 3) -> ReportResult:
    """Read the stage outputs, write the PNGs and report.html into ``paths.out``."""
    data = load_run(paths)
    head = headline(data)
    plots: dict[str, bytes | None] = {
        "class_iou": plot_class_iou(data),
        "confusion_matrix": plot_confusion(data),
        "class_frequency": plot_class_frequency(data),
        "class_weights": plot_class_weights(data),
        "training_curves": plot_training(data, head.get("majority_baseline_miou")),
        "per_image_miou": plot_per_image(data),
    }
    best_rows, worst_rows = select_gallery(data.rows, gallery_size)
    gallery: dict[str, list[GalleryItem]] = {}
    if best_rows:
        predictor = make_predictor(data) if data.has_crf else None
        if predictor is not None and predictor.model is None:
            data.notes.append(f"gallery: {predictor.reason}; pass --model")
        gallery["gallery_best"] = load_gallery(data, best_rows, predictor)
        gallery["gallery_worst"] = load_gallery(data, worst_rows, predictor)
        plots["gallery_best"] = plot_gallery(gallery["gallery_best"], f"{len(best_rows)} best images (per-image mIoU)")
        plots["gallery_worst"] = plot_gallery(gallery["gallery_worst"], f"{len(worst_rows)} worst images (per-image mIoU)")
    made = {k: v for k, v in plots.items() if v is not None}
    page = render_html(data, head, made, gallery)
    os.makedirs(paths.out, exist_ok=True)
    written = {}
    for name in PLOT_NAMES:  # a rerun must not leave a stale plot whose section has gone
        target = os.path.join(paths.out, f"{name}.png")
        if name in made:
            fs.write_bytes_atomic(target, made[name])
            written[name] = target
        elif os.path.exists(target):
            os.remove(target)
    html_path = os.path.join(paths.out, HTML_FILE)
    fs.write_bytes_atomic(html_path, page.encode("utf-8"))
    return ReportResult(html_path, written, head, data.notes)


def format_headline(head: dict[str, Any], what: str = "mIoU") -> str:
    """A few lines for the terminal; ``what`` names the images, e.g. "val mIoU"."""
    lines = [f"model {head['model_id']}: {head['images']} image(s), {head['labelled_images']} with ground truth"]
    if head.get("miou_before_crf") is not None:
        lines.append(f"{what + ' (dataset)':<24}model {fmt(head['miou_before_crf'])}   + CRF {fmt(head['miou_after_crf'])}")
        lines.append(f"{'mean per-image mIoU':<24}model {fmt(head['mean_per_image_miou_before_crf'])}   "
                     f"+ CRF {fmt(head['mean_per_image_miou_after_crf'])}")  # fmt: skip
        lines.append(f"majority-class baseline mIoU {fmt(head['majority_baseline_miou'])} "
                     f"(always '{head['majority_class']}')")  # fmt: skip
    if "best_val_miou_training" in head:
        lines.append(f"training: best val mIoU {fmt(head['best_val_miou_training'])} at epoch {head['best_epoch']} "
                     f"of {head['epochs_trained']}")  # fmt: skip
    return "\n".join(lines)
