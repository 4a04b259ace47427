"""What every segmentation loss shares: reading ``y_true`` (plain trainIds or packed
[trainId, pixel weight] targets) into safe labels, a valid mask and pixel weights, a division
that is 0, with a zero finite gradient, where its denominator is 0, and :data:`ops`, the
``keras.ops`` of the term modules, imported on first use (they import without Keras, so the
CLI reads their registrations fast)."""

from __future__ import annotations

import importlib
from typing import Any


class _KerasOps:
    """``keras.ops``, imported at the first attribute read; each function read is then cached."""

    def __getattr__(self, name: str) -> Any:
        function = getattr(importlib.import_module("keras.ops"), name)
        setattr(self, name, function)
        return function


ops: Any = _KerasOps()


def split_targets(y_true: Any, num_classes: int) -> tuple[Any, Any, Any]:
    """(safe int32 labels with invalid -> 0, valid mask float32, per-pixel weights float32)."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 4 and y_true.shape[-1] == 2:
        labels, weights = y_true[..., 0], ops.cast(y_true[..., 1], "float32")
    else:
        labels = y_true[..., 0] if len(y_true.shape) == 4 else y_true
        weights = None
    labels = ops.cast(labels, "int32")
    valid_bool = ops.logical_and(labels >= 0, labels < num_classes)
    valid = ops.cast(valid_bool, "float32")
    safe = ops.where(valid_bool, labels, ops.zeros_like(labels))
    if weights is None:
        weights = ops.ones_like(valid)
    return safe, valid, weights


def safe_divide(num: Any, den: Any) -> Any:
    """num/den where den > 0, else 0; the untaken branch never divides by 0 (no NaN gradients)."""
    positive = den > 0
    return ops.where(positive, num / ops.where(positive, den, ops.ones_like(den)), ops.zeros_like(num))


def logits_and_targets(y_true: Any, logits: Any) -> tuple[Any, Any, Any, Any, int]:
    """(float32 logits, safe labels, valid mask, pixel weights, number of classes)."""
    logits = ops.cast(logits, "float32")
    num_classes = int(logits.shape[-1])
    labels, valid, pixel_w = split_targets(y_true, num_classes)
    return logits, labels, valid, pixel_w, num_classes
