"""The cross-runtime label comparison of tests/agreement.py: a near-tie may go either way, a
wrong label fails, and a comparison made mostly of ties fails rather than passing vacuously."""

import numpy as np
import pytest
from agreement import assert_labels_agree


def _probabilities(margin_pixels: int, tie_pixels: int) -> np.ndarray:
    clear = np.tile(np.array([0.7, 0.2, 0.1], np.float32), (margin_pixels, 1))
    tied = np.tile(np.array([0.45, 0.449999, 0.100001], np.float32), (tie_pixels, 1))
    return np.concatenate([clear, tied])[None]


def test_a_near_tie_may_go_either_way():
    probabilities = _probabilities(99, 1)
    labels = probabilities.argmax(-1)
    labels[0, -1] = 1  # the runner-up, 1e-6 below
    assert_labels_agree(labels, probabilities)


def test_a_wrong_label_fails():
    probabilities = _probabilities(99, 1)
    labels = probabilities.argmax(-1)
    labels[0, 3] = 1  # 0.5 below the best
    with pytest.raises(AssertionError, match="1 of 100 pixels"):
        assert_labels_agree(labels, probabilities)


def test_mostly_ties_says_little_and_fails():
    probabilities = _probabilities(50, 50)
    with pytest.raises(AssertionError, match="near-ties"):
        assert_labels_agree(probabilities.argmax(-1), probabilities)
