"""Class statistics of `segops prepare` (stats.json): per split the images, total and ignore
pixels, and per class the pixel count, the number of images containing it and the total pixels
of those images (what median-frequency weights need). Unlabeled splits only count images.
"Split" here is a prepared part: coarse annotations are counted apart, under ``coarse/<split>``
(their void bands and skipped small objects would skew the fine classes' frequencies).

The accumulator is a dict split -> integer sums (numpy int64 arrays per class), so partial
results merge exactly and in any order; :class:`ClassStatsFn` is the Beam CombineFn over it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np

from segops.core.label_sets import LabelSet, cityscapes
from segops.core.labels import NUM_CLASSES
from segops.core.layout import ANNOTATION_KINDS, COARSE, part_annotation
from segops.prepare.analyze import Prepared

Accumulator = dict[str, dict[str, Any]]  # split -> {"images", "total", "counts", "image_counts", "image_pixels"}
_CLASS_SUMS = ("counts", "image_counts", "image_pixels")


def empty_split(num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    z = np.zeros(num_classes, dtype=np.int64)
    return {"images": 0, "total": 0, "counts": z, "image_counts": z.copy(), "image_pixels": z.copy()}


def add_prepared(acc: Accumulator, item: Prepared, num_classes: int = NUM_CLASSES) -> Accumulator:
    """Count one analysed image into ``acc`` (its pixels only when it is labelled)."""
    s = acc.setdefault(item.part, empty_split(num_classes))
    s["images"] += 1
    if item.pixel_counts is not None:
        total = item.height * item.width
        present = item.pixel_counts > 0
        s["total"] += total
        s["counts"] = s["counts"] + item.pixel_counts
        s["image_counts"] = s["image_counts"] + present
        s["image_pixels"] = s["image_pixels"] + present * total
    return acc


def merge(accumulators: Iterable[Accumulator]) -> Accumulator:
    out: Accumulator = {}
    for acc in accumulators:
        for split, s in acc.items():
            o = out.setdefault(split, empty_split(len(s["counts"])))
            o["images"] += s["images"]
            o["total"] += s["total"]
            for key in _CLASS_SUMS:
                o[key] = o[key] + s[key]
    return out


def to_stats(acc: Accumulator, splits: list[str], unlabeled: list[str], label_set: LabelSet | None = None) -> dict[str, Any]:
    """The stats.json document for ``splits`` over ``label_set``'s classes (Cityscapes when
    None; a split without images gets zeros)."""
    ls = label_set or cityscapes()
    labelled_splits, unlabeled_splits = {}, {}
    for split in splits:
        s = acc.get(split, empty_split(ls.num_classes))
        if split in unlabeled:
            unlabeled_splits[split] = {"images": int(s["images"])}
            continue
        labelled = int(s["counts"].sum())
        labelled_splits[split] = {
            "images": int(s["images"]),
            "total_pixels": int(s["total"]),
            "ignore_pixels": int(s["total"]) - labelled,
            "labelled_pixels": labelled,
            "pixel_counts": [int(v) for v in s["counts"]],
            "image_counts": [int(v) for v in s["image_counts"]],
            "image_pixels": [int(v) for v in s["image_pixels"]],
        }
    stats = {"class_names": list(ls.class_names), "splits": labelled_splits, "unlabeled_splits": unlabeled_splits}
    kinds = {part: part_annotation(part) for part in labelled_splits}
    if COARSE in kinds.values():  # only with coarse parts: a fine-only stats.json stays as it was
        stats["annotations"] = {
            kind: {
                "splits": [p for p in labelled_splits if kinds[p] == kind],
                **{key: sum(v[key] for p, v in labelled_splits.items() if kinds[p] == kind)
                   for key in ("images", "total_pixels", "ignore_pixels", "labelled_pixels")},
            }  # fmt: skip
            for kind in ANNOTATION_KINDS
            if kind in kinds.values()
        }
    return stats


class ClassStatsFn(beam.CombineFn):
    """Prepared -> the merged :data:`Accumulator` (integer sums: exact, order-independent);
    :func:`to_stats` makes the stats.json document of it once the parts are known."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes

    def create_accumulator(self) -> Accumulator:
        return {}

    def add_input(self, acc: Accumulator, item: Prepared) -> Accumulator:
        return add_prepared(acc, item, self.num_classes)

    def merge_accumulators(self, accumulators: Iterable[Accumulator]) -> Accumulator:
        return merge(accumulators)

    def extract_output(self, acc: Accumulator) -> Accumulator:
        return acc
