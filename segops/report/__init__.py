"""`segops report`: the quality report of a run, matplotlib plots (Agg) and one self-contained
``report.html``.

``build_report(ReportPaths(...))`` reads the outputs of the stages (nothing else) and writes::

    OUT/class_iou.png          dataset IoU per class, before and after the CRF (summary.json)
    OUT/confusion_matrix.png   confusion matrix normalised per ground-truth row (summary.json)
    OUT/class_frequency.png    pixel share of every class per split (prepare's stats.json)
    OUT/class_weights.png      class weights of every scheme (prepare's class_weights.json)
    OUT/training_curves.png    loss / val loss and val mIoU per epoch (train's history.json)
    OUT/per_image_miou.png     distribution of per-image mIoU, before and after the CRF (results table)
    OUT/gallery_best.png       best and worst images: image | ground truth | prediction | CRF
    OUT/gallery_worst.png
    OUT/report.html            all of the above, PNGs embedded as base64 data: URIs, plus tables

Sections whose input is missing (no prepared dir, no history, no ground truth) are left out of
the HTML with a note, so the report works on any ``segops infer`` output.

Modules:

* :mod:`~segops.report.data`: where the stage outputs are and reading them (:func:`load_run`).
* :mod:`~segops.report.headline`: the headline numbers and the majority-class baseline.
* :mod:`~segops.report.gallery`: choosing and loading the best and worst images.
* :mod:`~segops.report.plots`: the matplotlib plots, as PNG bytes.
* :mod:`~segops.report.html`: the page, one function per section.
* :mod:`~segops.report.build`: :func:`build_report`, writing it all.
"""

from segops.report.build import ReportResult, build_report
from segops.report.data import ReportError, ReportPaths, RunData, load_run
from segops.report.gallery import (
    DEFAULT_GALLERY_SIZE,
    MAX_GALLERY_SIZE,
    GalleryItem,
    load_gallery,
    make_predictor,
    select_gallery,
)
from segops.report.headline import format_headline, headline, majority_baseline

__all__ = [
    "DEFAULT_GALLERY_SIZE",
    "MAX_GALLERY_SIZE",
    "GalleryItem",
    "ReportError",
    "ReportPaths",
    "ReportResult",
    "RunData",
    "build_report",
    "format_headline",
    "headline",
    "load_gallery",
    "load_run",
    "majority_baseline",
    "make_predictor",
    "select_gallery",
]
