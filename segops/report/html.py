"""The report page: one self-contained HTML file (CSS inline, every plot a base64 ``data:`` URI),
built section by section (:func:`render_html`); a section whose plot is missing is left out.
Every number goes through :func:`segops.core.formatting.fmt_score` ('–' for no score)."""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any

from segops.core.formatting import fmt_score
from segops.report.data import RunData
from segops.report.gallery import GalleryItem
from segops.report.headline import source_split_share

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f5f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee} .note{color:#777;font-size:.9em}
.headline td:first-child{font-weight:600} code{background:#f3f3f3;padding:1px 4px}
"""

# the train run's options shown in the training section, in this order (model.json "training")
TRAINING_KEYS = ("model", "depth", "base_filters", "epochs", "epochs_trained", "batch_size", "crop", "scale_range",
                 "optimizer", "lr", "lr_schedule", "loss", "class_weights", "weight_maps", "precision_used")  # fmt: skip

GALLERIES = (("gallery_best", "Best images"), ("gallery_worst", "Worst images"))

# fixed notes, already HTML
METRICS_NOTE = (
    '<p class="note">Dataset mIoU: per-class IoU from the confusion matrix summed over all labelled images '
    "(the Cityscapes definition), averaged over classes with a score. Mean of per-image mIoU: the average "
    "of each image's own mIoU, a different number. A class in neither ground truth nor prediction has no "
    "score (–).</p>"
)
NO_GROUND_TRUTH_NOTE = '<p class="note">No ground truth was found for these images: masks and confidence only.</p>'
GALLERY_NOTE = (
    '<p class="note">Columns: the input image, its ground truth, the model\'s argmax (recomputed for these '
    "images with the same export and tiling as the infer run) and the CRF-refined mask infer wrote. Black is "
    "ignore.</p>"
)


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img id="img-{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _note(text: str) -> str:
    """A note with text from the data (escaped)."""
    return f'<p class="note">{html.escape(text)}</p>'


def _table(table_id: str, header: list[str], rows: list[list[str]], numeric_from: int = 1,
           css_class: str | None = None) -> str:  # fmt: skip
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{html.escape(v)}</td>' if i >= numeric_from else f"<td>{html.escape(v)}</td>"
            for i, v in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    cls = f" class='{css_class}'" if css_class else ""
    return f'<table{cls} id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _page_head(data: RunData) -> list[str]:
    esc = html.escape
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>segops report</title>',
        f"<style>{CSS}</style></head><body>",
        "<h1>segops quality report</h1>",
        f'<p class="note">model <code>{esc(data.model_id)}</code>; infer output <code>{esc(os.path.abspath(data.paths.infer))}</code>'
        f"; this file is self-contained (every plot is embedded), the same plots are PNG files next to it.</p>",
    ]


def _headline_section(data: RunData, head: dict[str, Any]) -> list[str]:
    before = data.stage("before_crf")
    rows = [["images in the table", str(head["images"])], ["with ground truth", str(head["labelled_images"])]]
    if before:
        rows += [
            ["dataset mIoU, model", fmt_score(head["miou_before_crf"])],
            ["dataset mIoU, + CRF", fmt_score(head["miou_after_crf"])],
            ["mean of per-image mIoU, model", fmt_score(head["mean_per_image_miou_before_crf"])],
            ["mean of per-image mIoU, + CRF", fmt_score(head["mean_per_image_miou_after_crf"])],
            ["pixel accuracy, model", fmt_score(head["pixel_accuracy_before_crf"])],
            ["pixel accuracy, + CRF", fmt_score(head["pixel_accuracy_after_crf"])],
            [f"majority-class baseline mIoU (always '{head['majority_class']}', the most frequent class of the "
             f"{head['majority_class_source']})", fmt_score(head["majority_baseline_miou"])],
        ]  # fmt: skip
    if "best_val_miou_training" in head:
        rows.append([f"best val mIoU during training (epoch {head['best_epoch']} of {head['epochs_trained']})",
                     fmt_score(head["best_val_miou_training"])])  # fmt: skip
    parts = [
        "<h2 id='sec-headline'>Headline</h2>",
        _table("headline", ["", "value"], rows, css_class="headline"),
        METRICS_NOTE,
    ]
    if not before:
        parts.append(NO_GROUND_TRUTH_NOTE)
    return parts


def _class_iou_section(data: RunData, plots: dict[str, bytes]) -> list[str]:
    parts = ["<h2 id='sec-class-iou'>Per-class IoU, before and after the CRF</h2>"]
    if "class_iou" not in plots:
        return parts
    before, after = data.stage("before_crf") or {}, data.stage("after_crf")
    rows = [
        [name, fmt_score(before["dataset_iou"][name]), fmt_score(after["dataset_iou"][name] if after else None),
         fmt_score(before["dataset_dice"][name]), fmt_score(after["dataset_dice"][name] if after else None)]
        for name in data.label_set.class_names
    ]  # fmt: skip
    rows.append(["mean", fmt_score(before["dataset_miou"]), fmt_score(after["dataset_miou"] if after else None),
                 fmt_score(before["dataset_mdice"]), fmt_score(after["dataset_mdice"] if after else None)])  # fmt: skip
    header = ["class", "IoU model", "IoU + CRF", "Dice model", "Dice + CRF"]
    return [*parts, _img("class_iou", plots["class_iou"], "per-class IoU before and after CRF"),
            _table("class-iou-table", header, rows)]  # fmt: skip


def _plot_section(plots: dict[str, bytes], name: str, section_id: str, title: str, alt: str) -> list[str]:
    """A heading and one plot, or nothing when the plot was not made."""
    if name not in plots:
        return []
    return [f"<h2 id='{section_id}'>{title}</h2>", _img(name, plots[name], alt)]


def _gallery_problems(items: list[GalleryItem]) -> list[str]:
    """Images that could not be shown in full, and recomputed scores that disagree with the table."""
    problems = [f"{it.row['rel_path']}: {p}" for it in items for p in it.problems]
    problems += [
        f"{it.row['rel_path']}: recomputed prediction scores {fmt_score(it.pred_miou)}, the table says "
        f"{fmt_score(it.row.get('mean_iou_before'))}"
        for it in items
        if it.row.get("crf") and it.pred_miou is not None and it.row.get("mean_iou_before") is not None
        and abs(it.pred_miou - it.row["mean_iou_before"]) > 1e-3
    ]
    return problems


def _gallery_section(key: str, title: str, png: bytes, items: list[GalleryItem]) -> list[str]:
    rows = []
    for it in items:
        r = it.row
        rows.append([r["rel_path"], fmt_score(r.get("mean_iou_before")), fmt_score(r.get("mean_iou_after")),
                     fmt_score(r.get("pixel_accuracy_before")), fmt_score(r.get("pixel_accuracy_after")),
                     fmt_score(r.get("crf_changed_fraction")), fmt_score(r.get("mean_confidence"))])  # fmt: skip
    header = ["image", "mIoU model", "mIoU + CRF", "pixel acc. model", "pixel acc. + CRF", "CRF changed",
              "mean confidence"]  # fmt: skip
    return [f"<h2 id='sec-{key}'>{title}</h2>", _img(key, png, title), _table(f"{key}-table", header, rows),
            *(_note(p) for p in _gallery_problems(items))]  # fmt: skip


def _gallery_sections(plots: dict[str, bytes], gallery: dict[str, list[GalleryItem]]) -> list[str]:
    parts = []
    for key, title in GALLERIES:
        items = gallery.get(key, [])
        if items:
            parts += _gallery_section(key, title, plots[key], items)
    parts.append(GALLERY_NOTE)
    return parts


def _classes_section(data: RunData, plots: dict[str, bytes]) -> list[str]:
    if "class_frequency" not in plots and "class_weights" not in plots:
        return []
    parts = ["<h2 id='sec-classes'>Class frequencies and weights (prepare)</h2>"]
    if "class_frequency" in plots:
        parts.append(_img("class_frequency", plots["class_frequency"], "class frequency"))
    if "class_weights" in plots:
        parts.append(_img("class_weights", plots["class_weights"], "class weights"))
        cw = data.class_weights or {}
        schemes = list(cw.get("schemes", {}))
        share = source_split_share(data)
        rows = [[name, fmt_score(share[i] * 100 if share is not None else None, 3)]
                + [fmt_score(cw["schemes"][s][i]) for s in schemes] for i, name in enumerate(data.label_set.class_names)]  # fmt: skip
        header = ["class", f"% of {cw.get('source_split', '?')} pixels", *schemes]
        parts.append(_table("class-weights-table", header, rows))
    return parts


def _training_section(data: RunData, plots: dict[str, bytes]) -> list[str]:
    parts = _plot_section(plots, "training_curves", "sec-training", "Training", "training curves")
    training = (data.train_summary or {}).get("training", {})
    if parts and training:
        rows = [[k, json.dumps(training[k])] for k in TRAINING_KEYS if k in training]
        parts.append(_table("training-options", ["option", "value"], rows))
    return parts


def render_html(data: RunData, head: dict[str, Any], plots: dict[str, bytes],
                gallery: dict[str, list[GalleryItem]]) -> str:  # fmt: skip
    """The whole page; ``plots`` holds the PNGs that were made, ``gallery`` the images shown."""
    parts = [
        *_page_head(data),
        *_headline_section(data, head),
        *_class_iou_section(data, plots),
        *_plot_section(plots, "confusion_matrix", "sec-confusion", "Confusion matrix", "confusion matrix"),
        *_plot_section(plots, "per_image_miou", "sec-per-image", "Per-image mIoU", "per-image mIoU"),
        *_gallery_sections(plots, gallery),
        *_classes_section(data, plots),
        *_training_section(data, plots),
        *(_note(note) for note in data.notes),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
