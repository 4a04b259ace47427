"""The report's plots, each a function of the run's data returning PNG bytes (or None when its
input is missing): per-class IoU, the confusion matrix, class frequencies and weights, training
curves, per-image mIoU and the galleries. matplotlib with the Agg backend, files only; the PNGs
carry no software/date metadata so a rerun writes the same bytes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from segops.core import layout
from segops.core.formatting import fmt_score
from segops.core.label_sets import LabelSet, cityscapes
from segops.report.data import RunData
from segops.report.gallery import GalleryItem


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


def _class_colors(label_set: LabelSet) -> list[tuple[float, float, float]]:
    return [tuple(c / 255 for c in label_set.train_to_color[i]) for i in range(label_set.num_classes)]


def _nan(values: list[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_class_iou(data: RunData) -> bytes | None:
    before, after = data.stage("before_crf"), data.stage("after_crf")
    if not before:
        return None
    plt = _pyplot()
    names = list(data.label_set.class_names)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 7))
    b = _nan([before["dataset_iou"][n] for n in names])
    ax.barh(y - 0.2, np.nan_to_num(b), height=0.4, color="#9bb7d4", label=f"model (mIoU {fmt_score(before['dataset_miou'])})")
    if after:
        a = _nan([after["dataset_iou"][n] for n in names])
        ax.barh(y + 0.2, np.nan_to_num(a), height=0.4, color="#1f4e79", label=f"+ CRF (mIoU {fmt_score(after['dataset_miou'])})")
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
    names = list(data.label_set.class_names)
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


def _class_bars(bars: list[tuple[str, Any, str | None]], ylabel: str, title: str, names: list[str]) -> bytes:
    """One group of bars per class (``names``) on a log axis; ``bars``: (legend label, a value
    per class, colour or None for matplotlib's colour cycle)."""
    plt = _pyplot()
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(bars)
    for k, (label, values, color) in enumerate(bars):
        ax.bar(x - 0.4 + width * (k + 0.5), values, width=width, label=label, color=color)
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def plot_class_frequency(data: RunData) -> bytes | None:
    splits = {s: v for s, v in (data.stats or {}).get("splits", {}).items() if v.get("labelled_pixels", 0) > 0}
    if not splits:
        return None
    bars = [(f"{split} ({v['images']} images)",
             np.asarray(v["pixel_counts"], dtype=np.float64) / v["labelled_pixels"] * 100,
             _SPLIT_COLORS[k % len(_SPLIT_COLORS)]) for k, (split, v) in enumerate(splits.items())]  # fmt: skip
    return _class_bars(bars, "% of labelled pixels (log scale)", f"Class frequencies (prepare: {layout.STATS_FILE})",
                       list(data.label_set.class_names))  # fmt: skip


def plot_class_weights(data: RunData) -> bytes | None:
    cw = data.class_weights
    if not cw or not cw.get("schemes"):
        return None
    bars = [(scheme + (" (default)" if scheme == cw.get("default_scheme") else ""), weights, None)
            for scheme, weights in cw["schemes"].items()]  # fmt: skip
    title = f"Class weights from the {cw.get('source_split', '?')} split (prepare: {layout.CLASS_WEIGHTS_FILE})"
    return _class_bars(bars, "class weight (log scale)", title, list(data.label_set.class_names))


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
            label=f"model (mean {fmt_score(float(np.nanmean(before)))})")  # fmt: skip
    if data.has_crf:
        after = _per_image(data, "after")
        ax.hist(after[~np.isnan(after)], bins=bins, histtype="step", linewidth=2, color="#1f4e79",
                label=f"+ CRF (mean {fmt_score(float(np.nanmean(after)))})")  # fmt: skip
    ax.set_xlabel("per-image mIoU")
    ax.set_ylabel("images")
    ax.set_title(f"Distribution of per-image mIoU ({before.size} labelled images)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_gallery(items: list[GalleryItem], title: str, label_set: LabelSet | None = None) -> bytes | None:
    if not items:
        return None
    ls = label_set or cityscapes()
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
            ("ground truth", None if it.gt is None else ls.colorize(it.gt)),
            (f"prediction  mIoU {fmt_score(row.get('mean_iou_before'), 3)}", None if it.pred is None else ls.colorize(it.pred)),
            (f"CRF  mIoU {fmt_score(row.get('mean_iou_after'), 3)}", None if it.crf is None else ls.colorize(it.crf)),
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
                      for v in np.unique(m) if v < ls.num_classes})  # fmt: skip
    colors = _class_colors(ls)
    handles = [Patch(facecolor=colors[i], edgecolor="black", label=ls.class_names[i]) for i in present]
    handles.append(Patch(facecolor="black", label="ignore"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=7, frameon=False)
    fig.suptitle(title, y=1.0)
    fig.tight_layout(rect=(0, 0.04, 1, 0.98))
    return _png(fig)
