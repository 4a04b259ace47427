"""Keras streaming metrics of training: a confusion matrix accumulated over an epoch, and the
mean IoU / mean Dice over it, with the definitions of :mod:`segops.core.metrics` (ignore
excluded; a class in neither ground truth nor prediction has no score and is left out of the
mean). Registered as ``segops>...`` so checkpoints that hold them load again (import this module
before ``keras.saving.load_model``)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from segops.core.labels import NUM_CLASSES
from segops.core.metrics import dice_per_class, iou_per_class


def count_dtype() -> str:
    """int64, except on JAX without x64 mode (int32 there: counts per cell must stay < 2**31)."""
    if keras.backend.backend() == "jax":
        import jax

        return "int64" if jax.config.jax_enable_x64 else "int32"
    return "int64"


@keras.saving.register_keras_serializable(package="segops")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Streaming confusion matrix (rows = ground truth, columns = argmax prediction).

    ``y_true``: trainIds (N, H, W) / (N, H, W, 1), or packed targets (N, H, W, 2) whose
    channel 0 is the trainId (see segops.training.losses). ``y_pred``: logits or probabilities
    (N, H, W, C). Pixels whose label is not in 0..C-1 (ignore = 255) are not counted.
    Counts are accumulated exactly in int64 (int32 on JAX without x64), per image in float32
    (exact below 2**24 pixels per image).
    ``result()`` is the mean IoU (mean Dice with ``dice = True``); :meth:`per_class_iou` etc.
    evaluate the accumulated matrix with the numpy definitions.
    """

    default_name = "confusion_matrix"
    dice = False  # result(): mean Dice instead of mean IoU

    def __init__(self, num_classes: int = NUM_CLASSES, name: str | None = None, dtype: Any = None) -> None:
        super().__init__(name=name or self.default_name, dtype=dtype)
        self.num_classes = num_classes
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype=count_dtype(), name="confusion"
        )

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        c = self.num_classes
        y_true = ops.convert_to_tensor(y_true)
        labels = y_true[..., 0] if len(y_true.shape) == 4 else y_true
        labels = ops.cast(labels, "int32")
        valid = ops.logical_and(labels >= 0, labels < c)
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        pred = ops.argmax(y_pred, axis=-1)
        n = ops.shape(labels)[0]
        gt_1h = ops.one_hot(ops.reshape(safe, (n, -1)), c, dtype="float32")
        gt_1h = gt_1h * ops.cast(ops.reshape(valid, (n, -1, 1)), "float32")
        pred_1h = ops.one_hot(ops.reshape(pred, (n, -1)), c, dtype="float32")
        per_image = ops.einsum("npc,npd->ncd", gt_1h, pred_1h)
        self.confusion.assign_add(ops.sum(ops.cast(ops.round(per_image), self.confusion.dtype), axis=0))

    def reset_state(self) -> None:
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), dtype=self.confusion.dtype))

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated matrix as numpy int64 (C, C)."""
        return np.asarray(ops.convert_to_numpy(self.confusion), dtype=np.int64)

    def per_class_iou(self) -> np.ndarray:
        return iou_per_class(self.confusion_matrix())

    def per_class_dice(self) -> np.ndarray:
        return dice_per_class(self.confusion_matrix())

    def mean_score(self, dice: bool) -> Any:
        """Mean IoU (or Dice) over the classes that have a score, as a tensor (NaN: none has)."""
        cm = ops.cast(self.confusion, "float32")
        tp = ops.diagonal(cm)
        fp = ops.sum(cm, axis=0) - tp
        fn = ops.sum(cm, axis=1) - tp
        num = 2.0 * tp if dice else tp
        den = num + fp + fn
        defined = den > 0
        score = ops.where(defined, num / ops.where(defined, den, ops.ones_like(den)), ops.zeros_like(den))
        count = ops.sum(ops.cast(defined, "float32"))
        # Classes in neither ground truth nor prediction have no score: excluded from the mean.
        return ops.where(count > 0, ops.sum(score) / ops.maximum(count, 1.0), float("nan"))

    def result(self) -> Any:
        return self.mean_score(dice=self.dice)

    def get_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="segops")
class MeanIoU(ConfusionMatrixMetric):
    """Mean IoU over classes present in ground truth or prediction (== segops.core.metrics.mean_iou)."""

    default_name = "mean_iou"


@keras.saving.register_keras_serializable(package="segops")
class MeanDice(ConfusionMatrixMetric):
    """Mean Dice over classes present in ground truth or prediction (== segops.core.metrics.mean_dice)."""

    default_name = "mean_dice"
    dice = True
