"""Segmentation losses and their weighted sum by name (``--loss ce+lovasz``).

Backend-neutral (``keras.ops`` only). Every function takes

* ``y_true``: either integer trainIds (N, H, W) / (N, H, W, 1), or the packed targets produced
  by :mod:`segops.training.input_pipeline`, float (N, H, W, 2) = [trainId, per-pixel weight];
* ``logits``: (N, H, W, C) in any float dtype; they are cast to float32 first, so the losses are
  safe under mixed_float16 / mixed_bfloat16 policies.

Pixels whose label is ``IGNORE_ID`` (255), or any value outside 0..C-1, are *valid = 0*: they are
replaced by class 0 before any gather/one-hot (so 255 never indexes out of range) and multiplied
by zero afterwards, so they contribute neither to a loss nor to its gradient.

Terms (normalised per batch; each is 0, with a zero finite gradient, on a batch without a
valid pixel):

* ``ce`` (:mod:`.pixel`): sum_valid(w * ce) / sum_valid(w), w = pixel weight * class weight[y]
  (the weighted mean, as PyTorch's ``CrossEntropyLoss(weight=...)``).
* ``focal``: the same mean of (1 - p_y)^gamma * ce (class weights are its alpha).
* ``ohem``: the CE mean over the hardest valid pixels only (a fraction, optionally plus every
  pixel below a probability threshold).
* ``dice``, ``jaccard``, ``lovasz`` (:mod:`.region`): 1 - soft Dice / soft IoU / the Lovász
  extension of the IoU, averaged over the classes present in the batch's ground truth. Pixel
  and class weights do not apply.

:class:`SegmentationLoss` sums the terms of a spec parsed by
:func:`segops.training.options.parse_loss` ("ce", "ce+dice", "focal*0.5+lovasz", ...).
Under a tf.distribute strategy each replica normalises over its own share of the global batch
and the replica losses are averaged (the usual data-parallel approximation of the global mean).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from segops.core.labels import NUM_CLASSES
from segops.training.losses.pixel import focal_loss, ohem_cross_entropy, weighted_cross_entropy
from segops.training.losses.region import lovasz_softmax_loss, soft_dice_loss, soft_jaccard_loss
from segops.training.losses.targets import split_targets
from segops.training.options import format_loss, parse_loss

__all__ = [
    "SegmentationLoss",
    "focal_loss",
    "lovasz_softmax_loss",
    "ohem_cross_entropy",
    "soft_dice_loss",
    "soft_jaccard_loss",
    "split_targets",
    "weighted_cross_entropy",
]


@keras.saving.register_keras_serializable(package="segops")
class SegmentationLoss(keras.losses.Loss):
    """The weighted sum of the terms of ``kind``, a loss spec (e.g. "ce", "ce+dice",
    "ce*0.5+lovasz"; see :func:`~segops.training.options.parse_loss`).

    ``class_weights``: per-class weights for the ce / focal / ohem terms (a scheme from
    class_weights.json) or None. ``use_pixel_weights``: multiply those terms by the per-pixel
    weight channel of packed targets (the U-Net weight maps); ignored for plain label targets.
    ``ce_weight`` / ``dice_weight`` multiply the ce / dice terms on top of the spec's weights
    (the way to weight them before specs had weights; saved configs still carry them).
    ``epsilon`` smooths Dice and Jaccard; ``focal_gamma``, ``ohem_fraction`` and
    ``ohem_threshold`` are the focal and OHEM hyper-parameters.
    """

    CONFIG_KEYS = ("kind", "class_weights", "use_pixel_weights", "ce_weight", "dice_weight", "epsilon", "num_classes",
                   "focal_gamma", "ohem_fraction", "ohem_threshold")  # fmt: skip

    def __init__(
        self,
        kind: str = "ce",
        class_weights: Sequence[float] | None = None,
        use_pixel_weights: bool = True,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        epsilon: float = 1.0,
        num_classes: int = NUM_CLASSES,
        focal_gamma: float = 2.0,
        ohem_fraction: float = 0.25,
        ohem_threshold: float | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.terms = parse_loss(kind)
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"{len(class_weights)} class weights for {num_classes} classes")
        kind = format_loss(self.terms)
        super().__init__(name=name or re.sub(r"[^a-z0-9]+", "_", kind), **kwargs)
        self.kind = kind
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.use_pixel_weights = use_pixel_weights
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.epsilon = epsilon
        self.num_classes = num_classes
        self.focal_gamma = focal_gamma
        self.ohem_fraction = ohem_fraction
        self.ohem_threshold = ohem_threshold

    def term(self, name: str, y_true: Any, y_pred: Any) -> Any:
        """The unweighted value of one term of the spec."""
        weighted = {"class_weights": self.class_weights, "use_pixel_weights": self.use_pixel_weights}
        if name == "ce":
            return weighted_cross_entropy(y_true, y_pred, **weighted)
        if name == "focal":
            return focal_loss(y_true, y_pred, self.focal_gamma, **weighted)
        if name == "ohem":
            return ohem_cross_entropy(y_true, y_pred, self.ohem_fraction, self.ohem_threshold, **weighted)
        if name == "dice":
            return soft_dice_loss(y_true, y_pred, self.epsilon)
        if name == "jaccard":
            return soft_jaccard_loss(y_true, y_pred, self.epsilon)
        if name == "lovasz":
            return lovasz_softmax_loss(y_true, y_pred)
        raise ValueError(f"unknown loss term {name!r}")

    def call(self, y_true: Any, y_pred: Any) -> Any:
        legacy = {"ce": self.ce_weight, "dice": self.dice_weight}
        total = None
        for name, weight in self.terms:
            value = weight * legacy.get(name, 1.0) * self.term(name, y_true, y_pred)
            total = value if total is None else total + value
        # A 1-element vector, not a scalar: Keras' "sum_over_batch_size" reduction then divides
        # by 1 and scales by 1/replicas under tf.distribute (it skips both for scalars), so
        # gradients summed over replicas are the mean of the per-replica losses.
        return ops.reshape(total, (1,))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self.CONFIG_KEYS})
        return config
