"""How the tests compare labels that two runtimes (or two kernels, batch sizes, processes) compute
from one model: on probabilities, never on bit-equal floats.

onnxruntime and TensorFlow, or one runtime with another batch shape, round differently in the
last bits; on a random-weight model many pixels have near-uniform probabilities, so an argmax
comparison lets a float tie decide the test (one pixel of 2048 on an AMD EPYC VM). The rule here:
every label must be one whose probability is within ``PROBABILITY_TOLERANCE`` of the pixel's
best, which means equal to the reference argmax wherever the top-2 margin exceeds the tolerance;
and those near-ties must be a small share of the pixels, so the comparison still has teeth.
"""

from __future__ import annotations

import numpy as np

# The tests' random-weight models give near-uniform probabilities (~1/19 each): float32 rounding
# moves them by ~1e-7 between runtimes, so 2e-6 covers other kernels' accumulation orders while
# leaving 85-95 % of those pixels decided by a clear margin (measured: 4-6 % near-ties at 1e-6;
# 2-6 % are exact ties, equal logits where a ReLU zeroed every input)
PROBABILITY_TOLERANCE = 2e-6
MAX_NEAR_TIE_SHARE = 0.15


def near_tie_mask(probabilities: np.ndarray, tolerance: float = PROBABILITY_TOLERANCE) -> np.ndarray:
    """HxW booleans: pixels whose top-2 probabilities are within ``tolerance`` of each other."""
    top2 = np.sort(probabilities, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) <= tolerance


def assert_labels_agree(labels: np.ndarray, probabilities: np.ndarray, tolerance: float = PROBABILITY_TOLERANCE,
                        err_msg: str = "", max_near_tie_share: float | None = MAX_NEAR_TIE_SHARE) -> None:  # fmt: skip
    """``labels`` (HxW) is an argmax of ``probabilities`` (HxWxC, the reference runtime's) up to
    ``tolerance``: exactly the argmax where the top-2 margin exceeds it, one of the near-best
    classes elsewhere; near-ties are at most ``max_near_tie_share`` of the pixels (None: a caller
    whose probabilities are checked against the reference another way)."""
    assert labels.shape == probabilities.shape[:-1], (labels.shape, probabilities.shape, err_msg)
    chosen = np.take_along_axis(probabilities, labels[..., None].astype(np.int64), axis=-1)[..., 0]
    shortfall = probabilities.max(axis=-1) - chosen
    bad = np.argwhere(shortfall > tolerance)
    assert len(bad) == 0, (
        f"{err_msg}: {len(bad)} of {labels.size} pixels got a label below the best probability by more than "
        f"{tolerance}; first at {tuple(bad[0])}: label {labels[tuple(bad[0])]}, "
        f"expected {probabilities[tuple(bad[0])].argmax()}"
    )
    ties = float(near_tie_mask(probabilities, tolerance).mean())
    assert max_near_tie_share is None or ties <= max_near_tie_share, f"{err_msg}: {ties:.1%} of pixels are near-ties: the comparison says little"

