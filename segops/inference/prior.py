"""The class-prior correction of ``segops infer --prior-correction``: a model trained with weighted
cross-entropy learns ``p_w(c|x) ~ w_c p(c|x)``, so on an image unlike its training ones every
uncertain pixel leans towards the heavy (rare) classes. Dividing its probabilities by
``w_c ** alpha`` takes back a share ``alpha`` of that lean (post-hoc logit adjustment, Menon et al.,
"Long-tail learning via logit adjustment", ICLR 2021), before tiles, TTA, the CRF and the argmax.

The weights are the ones the model trained with, recorded in its export's model.json
(``training.class_weights``); a model without them (an export from before they were recorded, a
published model, one trained unweighted) is left as it is.

Example:
    >>> import numpy as np
    >>> class Constant:
    ...     def predict(self, batch):
    ...         return np.tile(np.float32([0.3, 0.7]), (*batch.shape[:3], 1))
    >>> factors = prior_factors({"class_weights": [1.0, 4.0]}, alpha=0.5)
    >>> factors.tolist()
    [1.0, 0.5]
    >>> probs = PriorCorrected(Constant(), factors).predict(np.zeros((1, 1, 1, 3), np.uint8))
    >>> [round(float(p), 4) for p in probs[0, 0, 0]]  # 0.3 : 0.35, renormalised
    [0.4615, 0.5385]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

RECORD_KEY = "class_weights"  # in an export's model.json "training"


def prior_factors(training: Mapping[str, Any], alpha: float) -> np.ndarray | None:
    """Per-class factors ``w_c ** -alpha`` (largest 1) from a model's recorded training, or None
    when there is nothing to correct (alpha 0, no recorded weights, all weights equal). A class
    of weight 0 (absent from the training split, so never learned) takes the heaviest class's
    factor: the correction never raises it above the rarest learned class."""
    weights = training.get(RECORD_KEY)
    if not alpha or not weights:
        return None
    w = np.asarray(weights, dtype=np.float64)
    present = w > 0
    if not present.any() or np.ptp(w[present]) == 0:
        return None
    factors = np.empty_like(w)
    factors[present] = w[present] ** -alpha
    factors[~present] = factors[present].min()
    return (factors / factors.max()).astype(np.float32)


class PriorCorrected:
    """A model whose probabilities are multiplied by ``factors`` and renormalised per pixel."""

    def __init__(self, model: Any, factors: np.ndarray) -> None:
        self.model = model
        self.factors = factors

    def predict(self, batch: np.ndarray) -> np.ndarray:
        probs = np.asarray(self.model.predict(batch), dtype=np.float32)
        total = probs @ self.factors  # the new normaliser, one BLAS pass (a third of multiply-then-sum's time)
        corrected = probs * self.factors
        corrected /= total[..., None]
        return corrected


def corrected(model: Any, training: Mapping[str, Any], alpha: float) -> Any:
    """``model``, wrapped in :class:`PriorCorrected` when its recorded weights call for it."""
    factors = prior_factors(training, alpha)
    return model if factors is None else PriorCorrected(model, factors)
