"""The training loss: :class:`SegmentationLoss`, the weighted sum of the terms of a ``--loss``
spec, each computed by its registered function (:mod:`segops.training.losses.spec`) with the
loss's hyper-parameters and settings. Imports Keras (the class is a registered Keras loss).

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
from segops.training.losses.spec import all_hparams, format_loss, get_term, parse_loss


@keras.saving.register_keras_serializable(package="segops")
class SegmentationLoss(keras.losses.Loss):
    """The weighted sum of the terms of ``kind``, a loss spec (e.g. "ce", "ce+dice",
    "ce*0.5+lovasz"; see :func:`~segops.training.losses.spec.parse_loss`).

    ``class_weights``: per-class weights for the terms that take them (ce / focal / ohem; a
    scheme from class_weights.json) or None. ``use_pixel_weights``: multiply those terms by the
    per-pixel weight channel of packed targets (the U-Net weight maps); ignored for plain label
    targets. ``ce_weight`` / ``dice_weight`` multiply the ce / dice terms on top of the spec's
    weights (the way to weight them before specs had weights; saved configs still carry them).
    ``epsilon`` smooths Dice and Jaccard. Every registered term's hyper-parameters are keywords
    by their option names (``focal_gamma=``, ``ohem_fraction=``, ...; the spec's default when
    not given); the config records them all after the keys above.
    """

    SETTING_KEYS = ("kind", "class_weights", "use_pixel_weights", "ce_weight", "dice_weight", "epsilon", "num_classes")

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
        self.hparams = {hp.name: kwargs.pop(hp.name, hp.default) for hp in all_hparams()}
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

    def term(self, name: str, y_true: Any, y_pred: Any) -> Any:
        """The unweighted value of one term of the spec."""
        settings = {"class_weights": self.class_weights, "use_pixel_weights": self.use_pixel_weights,
                    "epsilon": self.epsilon}  # fmt: skip
        return get_term(name).value(y_true, y_pred, self.hparams, settings)

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
        config.update({key: getattr(self, key) for key in self.SETTING_KEYS})
        config.update(self.hparams)
        return config
