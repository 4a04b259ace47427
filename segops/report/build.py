"""The report's entry point: :func:`build_report` reads the stage outputs, makes every plot it
has the input for and writes them, with the page, into the output directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from segops.core import fs, layout
from segops.report.data import ReportPaths, load_run
from segops.report.gallery import (
    DEFAULT_GALLERY_SIZE,
    GalleryItem,
    load_gallery,
    make_predictor,
    select_gallery,
)
from segops.report.headline import headline
from segops.report.html import render_html
from segops.report.plots import (
    plot_class_frequency,
    plot_class_iou,
    plot_class_weights,
    plot_confusion,
    plot_gallery,
    plot_per_image,
    plot_training,
)


@dataclass
class ReportResult:
    html: str
    plots: dict[str, str]  # name -> PNG path
    headline: dict[str, Any]
    notes: list[str]


def build_report(paths: ReportPaths, gallery_size: int = DEFAULT_GALLERY_SIZE) -> ReportResult:
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
        plots["gallery_best"] = plot_gallery(gallery["gallery_best"], f"{len(best_rows)} best images (per-image mIoU)",
                                               data.label_set)  # fmt: skip
        plots["gallery_worst"] = plot_gallery(gallery["gallery_worst"], f"{len(worst_rows)} worst images (per-image mIoU)",
                                                data.label_set)  # fmt: skip
    made = {k: v for k, v in plots.items() if v is not None}
    page = render_html(data, head, made, gallery)
    os.makedirs(paths.out, exist_ok=True)
    written = {}
    for name in layout.REPORT_PLOTS:  # a rerun must not leave a stale plot whose section has gone
        target = os.path.join(paths.out, layout.report_plot_name(name))
        if name in made:
            fs.write_bytes_atomic(target, made[name])
            written[name] = target
        elif os.path.exists(target):
            os.remove(target)
    html_path = os.path.join(paths.out, layout.REPORT_HTML)
    fs.write_bytes_atomic(html_path, page.encode("utf-8"))
    return ReportResult(html_path, written, head, data.notes)
