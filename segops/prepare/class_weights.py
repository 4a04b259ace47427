"""Class-frequency weights: the scheme names (one place; ``segops train`` takes its choices from
here), their formulas, the trainId -> weight lookup table, and the class_weights.json document.

Class weights are one float per trainId, computed from a split's pixel statistics:

``median_frequency``  SegNet's median-frequency balancing. ``freq(c) = pixels of c / total pixels
                      of the images that contain c`` and ``w(c) = median(freq) / freq(c)``, the
                      median taken over the classes present.
``enet``              ENet's ``w(c) = 1 / ln(1.02 + p(c))`` with ``p(c)`` the class's share of the
                      labelled (non-ignore) pixels; bounded by ``1/ln(1.02) ~ 50.5``.
``inverse_frequency`` ``w(c) = 1 / p(c)``, normalised so that the mean weight over the present
                      classes is 1 (so the overall loss scale stays that of the unweighted loss).

A class absent from the source split gets weight :data:`ABSENT_CLASS_WEIGHT` (0) in every scheme:
with no pixels there is no frequency to balance, and 0 is finite and makes such pixels (which
can only occur in other splits) drop out of a weighted loss instead of dominating it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segops.core.labels import IGNORE_ID

SCHEMES: tuple[str, ...] = ("median_frequency", "enet", "inverse_frequency")
DEFAULT_SCHEME = "median_frequency"
ENET_C = 1.02
ABSENT_CLASS_WEIGHT = 0.0

#: What each scheme computes, in words; written into class_weights.json next to the numbers.
DEFINITIONS: dict[str, str] = {
    "median_frequency": "median(freq)/freq(c), freq(c) = pixels(c) / total pixels of the images containing c",
    "enet": f"1/ln({ENET_C} + p(c)), p(c) = pixels(c) / labelled pixels",
    "inverse_frequency": "(1/p(c)) / mean over present classes of 1/p, p(c) = pixels(c) / labelled pixels",
}


def median_frequency_weights(pixel_counts: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """SegNet: ``median(freq) / freq(c)``, ``freq(c) = pixels(c) / pixels of images containing c``."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    denom = np.asarray(image_pixels, dtype=np.float64)
    present = (counts > 0) & (denom > 0)
    out = np.full(counts.shape, ABSENT_CLASS_WEIGHT, dtype=np.float64)
    if present.any():
        freq = counts[present] / denom[present]
        out[present] = np.median(freq) / freq
    return out


def enet_weights(pixel_counts: np.ndarray, c: float = ENET_C) -> np.ndarray:
    """ENet: ``1 / ln(c + p(c))`` with ``p(c)`` the share of labelled pixels."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    total = counts.sum()
    out = np.full(counts.shape, ABSENT_CLASS_WEIGHT, dtype=np.float64)
    present = counts > 0
    if total > 0:
        out[present] = 1.0 / np.log(c + counts[present] / total)
    return out


def inverse_frequency_weights(pixel_counts: np.ndarray) -> np.ndarray:
    """``1 / p(c)`` normalised to a mean of 1 over the present classes."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    out = np.full(counts.shape, ABSENT_CLASS_WEIGHT, dtype=np.float64)
    present = counts > 0
    if present.any():
        inv = counts.sum() / counts[present]
        out[present] = inv / inv.mean()
    return out


def class_weights(pixel_counts: np.ndarray, image_pixels: np.ndarray) -> dict[str, list[float]]:
    """All schemes, name -> list of one float per class (finite, >= 0)."""
    schemes = {
        "median_frequency": median_frequency_weights(pixel_counts, image_pixels),
        "enet": enet_weights(pixel_counts),
        "inverse_frequency": inverse_frequency_weights(pixel_counts),
    }
    assert list(schemes) == list(SCHEMES)
    return {name: [float(v) for v in w] for name, w in schemes.items()}


def class_weight_lut(weights: list[float] | np.ndarray) -> np.ndarray:
    """trainId (0..255) -> weight, float32; ignore and ids >= the number of classes map to 0."""
    lut = np.zeros(256, dtype=np.float32)
    lut[: len(weights)] = np.asarray(weights, dtype=np.float32)
    lut[IGNORE_ID] = 0.0
    return lut


def make_class_weights(stats: dict[str, Any], source_split: str | None, scheme: str) -> dict[str, Any]:
    """The class_weights.json document: every scheme from ``source_split``'s statistics in
    ``stats`` (stats.json, whose class names are the label set's); all zero when there is no
    labelled source split."""
    class_names = list(stats["class_names"])
    s = stats["splits"].get(source_split) if source_split else None
    counts = np.asarray(s["pixel_counts"] if s else [0] * len(class_names), dtype=np.int64)
    image_pixels = np.asarray(s["image_pixels"] if s else [0] * len(class_names), dtype=np.int64)
    return {
        "source_split": source_split,
        "default_scheme": scheme,
        "schemes": class_weights(counts, image_pixels),
        "class_names": class_names,
        "present": [bool(c > 0) for c in counts],
        "absent_class_weight": ABSENT_CLASS_WEIGHT,
        "definitions": dict(DEFINITIONS),
    }
