"""Per-pixel loss terms ``ce``, ``focal`` and ``ohem``: weighted cross-entropy, focal loss and
online hard-pixel mining (OHEM), with the focal and OHEM hyper-parameters.

All three are a weighted mean over valid pixels of a per-pixel term, with the weight
w = valid x pixel weight (the U-Net weight map, when used) x class weight[y] (the focal loss's
alpha), normalised by the sum of the weights of the pixels that count (see the package docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from segops.training.losses.spec import WEIGHTS, HParam, loss_term
from segops.training.losses.targets import logits_and_targets, ops, safe_divide


def _ce_and_weights(
    y_true: Any, logits: Any, class_weights: Sequence[float] | None, use_pixel_weights: bool
) -> tuple[Any, Any, Any]:
    """(per-pixel CE, per-pixel weight w (0 at invalid pixels), valid mask), all (N, H, W) float32."""
    logits, labels, valid, pixel_w, num_classes = logits_and_targets(y_true, logits)
    onehot = ops.one_hot(labels, num_classes, dtype="float32")
    ce = -ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1)
    w = valid * pixel_w if use_pixel_weights else valid
    if class_weights is not None:
        cw = ops.convert_to_tensor(list(class_weights), dtype="float32")
        w = w * ops.sum(onehot * cw, axis=-1)
    return ce, w, valid


@loss_term("ce", settings=WEIGHTS, position=0)
def weighted_cross_entropy(
    y_true: Any, logits: Any, class_weights: Sequence[float] | None = None, use_pixel_weights: bool = True
) -> Any:
    """sum(w * ce) / sum(w) over the valid pixels of the batch; 0 when sum(w) = 0."""
    ce, w, _ = _ce_and_weights(y_true, logits, class_weights, use_pixel_weights)
    return safe_divide(ops.sum(w * ce), ops.sum(w))


FOCAL_GAMMA = HParam("focal_gamma", "gamma", 2.0, low=0,
                     help="Focal loss exponent: (1 - p)^gamma down-weights easy pixels (0: CE).")  # fmt: skip


@loss_term("focal", hparams=(FOCAL_GAMMA,), settings=WEIGHTS, position=4)
def focal_loss(
    y_true: Any,
    logits: Any,
    gamma: float = 2.0,
    class_weights: Sequence[float] | None = None,
    use_pixel_weights: bool = True,
) -> Any:
    """sum(w * (1 - p_y)^gamma * ce) / sum(w) (Lin et al. 2017; class weights play alpha).

    gamma = 0 is :func:`weighted_cross_entropy`. 1 - p_y is computed as -expm1(-ce) (exact for
    confident pixels) and kept >= 1e-30 so that gamma < 1 has a finite gradient at p_y = 1.
    """
    ce, w, _ = _ce_and_weights(y_true, logits, class_weights, use_pixel_weights)
    modulator = ops.power(ops.maximum(-ops.expm1(-ce), 1e-30), float(gamma))
    return safe_divide(ops.sum(w * modulator * ce), ops.sum(w))


OHEM_FRACTION = HParam("ohem_fraction", "fraction", 0.25, low=0, high=1, low_open=True,
                       help="OHEM: share of the batch's valid pixels kept, the hardest (highest CE).")  # fmt: skip
OHEM_THRESHOLD = HParam("ohem_threshold", "threshold", None, low=0, high=1, low_open=True, metavar="P",
                        help="OHEM: also keep every pixel whose true-class probability is below P "
                             "(--ohem-fraction is then a minimum).")  # fmt: skip


@loss_term("ohem", hparams=(OHEM_FRACTION, OHEM_THRESHOLD), settings=WEIGHTS, position=5)
def ohem_cross_entropy(
    y_true: Any,
    logits: Any,
    fraction: float = 0.25,
    threshold: float | None = None,
    class_weights: Sequence[float] | None = None,
    use_pixel_weights: bool = True,
) -> Any:
    """Weighted CE over the hardest valid pixels of the batch only.

    Hardness is the unweighted CE. Kept: the k = max(1, ceil(fraction * valid pixels)) hardest
    (pixels tied with the k-th are all kept); with ``threshold`` also every valid pixel whose
    true-class probability is below it (so k is then a minimum, as in PSPNet/mmsegmentation's
    OHEM sampler). The selection is not differentiated; the loss is sum(w * ce) / sum(w) over
    the kept pixels.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"OHEM fraction must be in (0, 1], got {fraction}")
    ce, w, valid = _ce_and_weights(y_true, logits, class_weights, use_pixel_weights)
    hardness = ops.reshape(ops.stop_gradient(ops.where(valid > 0, ce, -ops.ones_like(ce))), (-1,))
    count = ops.sum(valid)
    k = ops.cast(ops.maximum(ops.ceil(count * fraction), 1.0), "int32")
    ascending = ops.sort(hardness)
    cut = ops.take(ascending, ops.shape(ascending)[0] - k)  # the k-th largest hardness
    if threshold is not None:
        cut = ops.minimum(cut, -math.log(threshold))  # p_y < threshold <=> ce > -log(threshold)
    keep = ops.cast(ops.reshape(hardness, ops.shape(ce)) >= cut, "float32")
    return safe_divide(ops.sum(keep * w * ce), ops.sum(keep * w))
