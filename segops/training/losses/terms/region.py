"""Region (set) loss terms ``dice``, ``jaccard`` and ``lovasz`` over the valid pixels of the whole batch: soft Dice, soft Jaccard (IoU)
and Lovász-softmax. Each is 1 - a per-class overlap score averaged over the classes present in
the batch's ground truth; pixel and class weights do not apply (they have no place in a set
overlap). p = softmax(logits) in float32.
"""

from __future__ import annotations

from typing import Any

from segops.training.losses.spec import loss_term
from segops.training.losses.targets import logits_and_targets, ops, safe_divide


def _mean_over_present(per_class: Any, gt_sum: Any) -> Any:
    """Mean of ``per_class`` over the classes with ground-truth pixels; 0 when there are none."""
    present = ops.cast(gt_sum > 0, "float32")
    return safe_divide(ops.sum(present * per_class), ops.sum(present))


def _soft_overlaps(y_true: Any, logits: Any) -> tuple[Any, Any, Any]:
    """Per class, over the valid pixels of the batch: (sum p*g, sum p, sum g)."""
    logits, labels, valid, _, num_classes = logits_and_targets(y_true, logits)
    mask = ops.expand_dims(valid, -1)
    probs = ops.softmax(logits, axis=-1) * mask
    onehot = ops.one_hot(labels, num_classes, dtype="float32") * mask
    axes = tuple(range(len(logits.shape) - 1))
    return ops.sum(probs * onehot, axis=axes), ops.sum(probs, axis=axes), ops.sum(onehot, axis=axes)


@loss_term("dice", settings=("epsilon",), position=1)
def soft_dice_loss(y_true: Any, logits: Any, epsilon: float = 1.0) -> Any:
    """1 - mean over present classes of (2 sum(p g) + eps) / (sum p + sum g + eps)."""
    intersection, prob_sum, gt_sum = _soft_overlaps(y_true, logits)
    dice = (2.0 * intersection + epsilon) / (prob_sum + gt_sum + epsilon)
    return _mean_over_present(1.0 - dice, gt_sum)


@loss_term("jaccard", settings=("epsilon",), position=2)
def soft_jaccard_loss(y_true: Any, logits: Any, epsilon: float = 1.0) -> Any:
    """1 - mean over present classes of (sum(p g) + eps) / (sum p + sum g - sum(p g) + eps)."""
    intersection, prob_sum, gt_sum = _soft_overlaps(y_true, logits)
    jaccard = (intersection + epsilon) / (prob_sum + gt_sum - intersection + epsilon)
    return _mean_over_present(1.0 - jaccard, gt_sum)


@loss_term("lovasz", position=3)
def lovasz_softmax_loss(y_true: Any, logits: Any) -> Any:
    """Lovász-softmax (Berman, Triki, Blaschko, CVPR 2018), per batch, classes "present".

    The authors' ``lovasz_softmax(probas, labels, classes='present', per_image=False)``: for each
    class c with ground-truth pixels, the errors e = |g_c - p_c| of the valid pixels sorted in
    decreasing order are dotted with the gradient of the Jaccard loss along that order,
    J_i = 1 - (G - cumsum(g)_i) / (G + cumsum(1 - g)_i), grad = J_i - J_{i-1}; the loss is the
    mean over those classes. On hard (0/1) predictions it equals 1 - the per-class IoU.
    Invalid pixels sort after every valid one (their key is -1 < any error) and are masked
    out of the sum, so they change neither the order of the valid pixels nor the value.
    The cumsums are float32: exact up to 2**24 pixels per batch (e.g. 8 x 1024 x 2048).
    """
    logits, labels, valid, _, num_classes = logits_and_targets(y_true, logits)
    valid = ops.reshape(valid, (1, -1))
    probs = ops.transpose(ops.reshape(ops.softmax(logits, axis=-1), (-1, num_classes)))  # (C, P)
    fg = ops.transpose(ops.reshape(ops.one_hot(labels, num_classes, dtype="float32"), (-1, num_classes))) * valid
    errors = ops.abs(fg - probs) * valid
    order = ops.argsort(ops.where(valid > 0, -errors, ops.ones_like(errors)), axis=-1)  # descending errors
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    fg_sorted = ops.take_along_axis(fg, order, axis=-1)
    gts = ops.sum(fg, axis=-1, keepdims=True)
    intersection = gts - ops.cumsum(fg_sorted, axis=-1)
    union = gts + ops.cumsum(1.0 - fg_sorted, axis=-1)  # >= 1 everywhere: no division by 0
    jaccard = 1.0 - intersection / union
    grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    per_class = ops.sum(errors_sorted * grad, axis=-1)
    return _mean_over_present(per_class, gts[:, 0])
