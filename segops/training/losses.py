"""Segmentation losses: weighted cross-entropy, soft Dice, and their weighted sum.

Backend-neutral (``keras.ops`` only). Every function takes

* ``y_true``: either integer trainIds (N, H, W) / (N, H, W, 1), or the packed targets produced
  by :mod:`segops.training.input_pipeline`, float (N, H, W, 2) = [trainId, per-pixel weight];
* ``logits``: (N, H, W, C) in any float dtype; they are cast to float32 first, so the losses are
  safe under mixed_float16 / mixed_bfloat16 policies.

Pixels whose label is ``IGNORE_ID`` (255), or any value outside 0..C-1, are *valid = 0*: they are
replaced by class 0 before any gather/one-hot (so 255 never indexes out of range) and multiplied
by zero afterwards, so they contribute neither to a loss nor to its gradient.

Normalisation (per batch):

* weighted CE = sum_valid(w_pix * w_class[y] * ce) / sum_valid(w_pix * w_class[y]) (the weighted
  mean, as PyTorch's ``CrossEntropyLoss(weight=...)``), 0 when the batch has no valid pixel or
  all weights are 0. With all weights 1 this is the plain mean CE over valid pixels.
* soft Dice = 1 - mean over classes present in the batch's ground truth of
  (2 * sum(p_c g_c) + eps) / (sum(p_c) + sum(g_c) + eps), sums over the valid pixels of the whole
  batch, p = softmax(logits); 0 when no class is present. Pixel/class weights do not apply to Dice.
* combined = ce_weight * CE + dice_weight * Dice.

Under a tf.distribute strategy each replica normalises over its own share of the global batch
and the replica losses are averaged (the usual data-parallel approximation of the global mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from segops.core.labels import NUM_CLASSES
from segops.training.options import LOSS_KINDS


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


def _safe_divide(num: Any, den: Any) -> Any:
    """num/den where den > 0, else 0; the untaken branch never divides by 0 (no NaN gradients)."""
    positive = den > 0
    return ops.where(positive, num / ops.where(positive, den, ops.ones_like(den)), ops.zeros_like(num))


def weighted_cross_entropy(
    y_true: Any, logits: Any, class_weights: Sequence[float] | None = None, use_pixel_weights: bool = True
) -> Any:
    """Weighted mean cross-entropy over valid pixels (see module docstring)."""
    logits = ops.cast(logits, "float32")
    num_classes = logits.shape[-1]
    labels, valid, pixel_w = split_targets(y_true, num_classes)
    onehot = ops.one_hot(labels, num_classes, dtype="float32")
    ce = -ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1)
    w = valid * pixel_w if use_pixel_weights else valid
    if class_weights is not None:
        cw = ops.convert_to_tensor(list(class_weights), dtype="float32")
        w = w * ops.sum(onehot * cw, axis=-1)
    return _safe_divide(ops.sum(w * ce), ops.sum(w))


def soft_dice_loss(y_true: Any, logits: Any, epsilon: float = 1.0) -> Any:
    """1 - mean soft Dice over the classes present in the batch's valid ground truth."""
    logits = ops.cast(logits, "float32")
    num_classes = logits.shape[-1]
    labels, valid, _ = split_targets(y_true, num_classes)
    mask = ops.expand_dims(valid, -1)
    probs = ops.softmax(logits, axis=-1) * mask
    onehot = ops.one_hot(labels, num_classes, dtype="float32") * mask
    axes = tuple(range(len(logits.shape) - 1))
    intersection = ops.sum(probs * onehot, axis=axes)
    gt_sum = ops.sum(onehot, axis=axes)
    dice = (2.0 * intersection + epsilon) / (ops.sum(probs, axis=axes) + gt_sum + epsilon)
    present = ops.cast(gt_sum > 0, "float32")
    return _safe_divide(ops.sum(present * (1.0 - dice)), ops.sum(present))


@keras.saving.register_keras_serializable(package="segops")
class SegmentationLoss(keras.losses.Loss):
    """``kind``: "ce", "dice" or "ce+dice" (= ce_weight * CE + dice_weight * Dice).

    ``class_weights``: per-class weights for the CE term (a scheme from class_weights.json) or
    None. ``use_pixel_weights``: multiply the CE by the per-pixel weight channel of packed
    targets (the U-Net weight maps); ignored for plain label targets.
    """

    CONFIG_KEYS = ("kind", "class_weights", "use_pixel_weights", "ce_weight", "dice_weight", "epsilon", "num_classes")

    def __init__(
        self,
        kind: str = "ce",
        class_weights: Sequence[float] | None = None,
        use_pixel_weights: bool = True,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        epsilon: float = 1.0,
        num_classes: int = NUM_CLASSES,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kind not in LOSS_KINDS:
            raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"{len(class_weights)} class weights for {num_classes} classes")
        super().__init__(name=name or kind.replace("+", "_"), **kwargs)
        self.kind = kind
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.use_pixel_weights = use_pixel_weights
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.epsilon = epsilon
        self.num_classes = num_classes

    def call(self, y_true: Any, y_pred: Any) -> Any:
        total = 0.0
        if self.kind in ("ce", "ce+dice"):
            ce = weighted_cross_entropy(y_true, y_pred, self.class_weights, self.use_pixel_weights)
            total = ce if self.kind == "ce" else self.ce_weight * ce
        if self.kind in ("dice", "ce+dice"):
            dice = soft_dice_loss(y_true, y_pred, self.epsilon)
            total = dice if self.kind == "dice" else total + self.dice_weight * dice
        # A 1-element vector, not a scalar: Keras' "sum_over_batch_size" reduction then divides
        # by 1 and scales by 1/replicas under tf.distribute (it skips both for scalars), so
        # gradients summed over replicas are the mean of the per-replica losses.
        return ops.reshape(total, (1,))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self.CONFIG_KEYS})
        return config
