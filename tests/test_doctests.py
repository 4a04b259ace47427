"""The ``Example:`` sections of the entry points a contributor reads first run as doctests, for
the modules that are pure and fast to import (no TensorFlow, Keras, pydensecrf or pyarrow). The
heavy ones (``build_model``, ``train``, the CRF's ``refine``) mark their examples
``# doctest: +SKIP`` and are not listed here."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = (
    "segops.core.metrics",  # confusion_matrix
    "segops.core.label_sets",  # load_label_set
    "segops.inference.rows",  # metrics_row
    "segops.training.budget",  # plan_budget
    "segops.training.losses.spec",  # parse_loss
    "segops.inference.prior",  # prior_factors, PriorCorrected
    "segops.core.runtime",  # late_onednn_message
)


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_of_the_module_pass(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1, f"{name} has no example"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"
