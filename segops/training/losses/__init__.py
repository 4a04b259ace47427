"""Segmentation losses and their weighted sum by name (``--loss ce+lovasz``).

Backend-neutral (``keras.ops`` only). Every term function takes

* ``y_true``: either integer trainIds (N, H, W) / (N, H, W, 1), or the packed targets produced
  by :mod:`segops.training.input_pipeline`, float (N, H, W, 2) = [trainId, per-pixel weight];
* ``logits``: (N, H, W, C) in any float dtype; they are cast to float32 first, so the losses are
  safe under mixed_float16 / mixed_bfloat16 policies.

Pixels whose label is ``IGNORE_ID`` (255), or any value outside 0..C-1, are *valid = 0*: they are
replaced by class 0 before any gather/one-hot (so 255 never indexes out of range) and multiplied
by zero afterwards, so they contribute neither to a loss nor to its gradient.

Terms (normalised per batch; each is 0, with a zero finite gradient, on a batch without a
valid pixel), one or more per module of :mod:`.terms`, registered in :mod:`.spec`:

* ``ce`` (:mod:`.terms.pixel`): sum_valid(w * ce) / sum_valid(w), w = pixel weight * class
  weight[y] (the weighted mean, as PyTorch's ``CrossEntropyLoss(weight=...)``).
* ``focal``: the same mean of (1 - p_y)^gamma * ce (class weights are its alpha).
* ``ohem``: the CE mean over the hardest valid pixels only (a fraction, optionally plus every
  pixel below a probability threshold).
* ``dice``, ``jaccard``, ``lovasz`` (:mod:`.terms.region`): 1 - soft Dice / soft IoU / the Lovász
  extension of the IoU, averaged over the classes present in the batch's ground truth. Pixel
  and class weights do not apply.

:class:`~.total.SegmentationLoss` sums the terms of a spec parsed by :func:`.spec.parse_loss`
("ce", "ce+dice", "focal*0.5+lovasz", ...). This package and its term modules import without
Keras; ``SegmentationLoss`` (in :mod:`.total`, which does import Keras) is loaded on first use.
"""

from __future__ import annotations

from typing import Any

from segops.training.losses.targets import split_targets
from segops.training.losses.terms.pixel import focal_loss, ohem_cross_entropy, weighted_cross_entropy
from segops.training.losses.terms.region import lovasz_softmax_loss, soft_dice_loss, soft_jaccard_loss

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


def __getattr__(name: str) -> Any:
    if name == "SegmentationLoss":  # imports Keras: only when asked for
        from segops.training.losses.total import SegmentationLoss

        return SegmentationLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
