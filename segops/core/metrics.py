"""Metric definitions: confusion matrices, IoU and Dice. One home for both pipelines and training.

Definitions (per class c, over pixels whose ground truth is not ignore):
    IoU_c  = TP / (TP + FP + FN)        Dice_c = 2 TP / (2 TP + FP + FN)
A class absent from both prediction and ground truth has no score (NaN here, null in Parquet),
neither 0 nor 1. Dataset mIoU is computed from the *summed* confusion matrix (the Cityscapes
definition); the mean of per-image mIoU is a different number and is always named as such.

The numpy functions below serve the Beam pipelines and tests; the Keras streaming metrics used
during training live further down in this module and use the same definitions.
"""

from __future__ import annotations

import numpy as np

from segops.core.labels import IGNORE_ID, NUM_CLASSES


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix (rows = ground truth, columns = prediction), int64, ignore excluded.

    Ground-truth pixels equal to ``IGNORE_ID`` (or any id >= num_classes) are skipped;
    predictions outside 0..num_classes-1 are not expected (a model always predicts a class).
    """
    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in size: {gt.shape} vs {pred.shape}")
    valid = gt < num_classes
    if IGNORE_ID < num_classes:  # pragma: no cover - guards a misconfigured table
        raise ValueError("IGNORE_ID must not be a class index")
    idx = gt[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _tp_fp_fn(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return tp, fp, fn


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN where the class is in neither gt nor prediction."""
    tp, fp, fn = _tp_fp_fn(cm)
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice from a confusion matrix; NaN where the class is in neither gt nor prediction."""
    tp, fp, fn = _tp_fp_fn(cm)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def nanmean_or_nan(values: np.ndarray) -> float:
    """Mean over defined entries; NaN (not a warning) when none is defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def mean_iou(cm: np.ndarray) -> float:
    return nanmean_or_nan(iou_per_class(cm))


def mean_dice(cm: np.ndarray) -> float:
    return nanmean_or_nan(dice_per_class(cm))


def pixel_accuracy(cm: np.ndarray) -> float:
    total = float(np.asarray(cm).sum())
    return float(np.trace(cm)) / total if total else float("nan")


# --- Keras streaming metrics (training) --------------------------------------------------------
# Built on first access (module ``__getattr__``) so that the Beam pipelines, which use only the
# numpy functions above, never import Keras/TensorFlow through this module.

KERAS_METRIC_NAMES = ("ConfusionMatrixMetric", "MeanIoU", "MeanDice")


def _build_keras_metrics() -> dict[str, type]:
    import keras
    from keras import ops

    def _count_dtype() -> str:
        """int64, except on JAX without x64 mode (int32 there: counts per cell must stay < 2**31)."""
        if keras.backend.backend() == "jax":
            import jax

            return "int64" if jax.config.jax_enable_x64 else "int32"
        return "int64"

    class ConfusionMatrixMetric(keras.metrics.Metric):
        """Streaming confusion matrix (rows = ground truth, columns = argmax prediction).

        ``y_true``: trainIds (N, H, W) / (N, H, W, 1), or packed targets (N, H, W, 2) whose
        channel 0 is the trainId (see segops.losses). ``y_pred``: logits or probabilities
        (N, H, W, C). Pixels whose label is not in 0..C-1 (ignore = 255) are not counted.
        Counts are accumulated exactly in int64 (int32 on JAX without x64), per image in float32
        (exact below 2**24 pixels per image).
        ``result()`` is implemented by subclasses; :meth:`per_class_iou` etc. evaluate the
        accumulated matrix with the numpy definitions above.
        """

        def __init__(self, num_classes: int = NUM_CLASSES, name: str = "confusion_matrix", dtype=None):
            super().__init__(name=name, dtype=dtype)
            self.num_classes = num_classes
            self.confusion = self.add_variable(
                shape=(num_classes, num_classes), initializer="zeros", dtype=_count_dtype(), name="confusion"
            )

        def update_state(self, y_true, y_pred, sample_weight=None):
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

        def reset_state(self):
            self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), dtype=self.confusion.dtype))

        def confusion_matrix(self):
            """The accumulated matrix as numpy int64 (C, C)."""
            return np.asarray(ops.convert_to_numpy(self.confusion), dtype=np.int64)

        def per_class_iou(self):
            return iou_per_class(self.confusion_matrix())

        def per_class_dice(self):
            return dice_per_class(self.confusion_matrix())

        def _scores(self, dice: bool):
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

        def result(self):
            return self._scores(dice=False)

        def get_config(self):
            return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}

    class MeanIoU(ConfusionMatrixMetric):
        """Mean IoU over classes present in ground truth or prediction (== :func:`mean_iou`)."""

        def __init__(self, num_classes: int = NUM_CLASSES, name: str = "mean_iou", dtype=None):
            super().__init__(num_classes=num_classes, name=name, dtype=dtype)

        def result(self):
            return self._scores(dice=False)

    class MeanDice(ConfusionMatrixMetric):
        """Mean Dice over classes present in ground truth or prediction (== :func:`mean_dice`)."""

        def __init__(self, num_classes: int = NUM_CLASSES, name: str = "mean_dice", dtype=None):
            super().__init__(num_classes=num_classes, name=name, dtype=dtype)

        def result(self):
            return self._scores(dice=True)

    classes = {"ConfusionMatrixMetric": ConfusionMatrixMetric, "MeanIoU": MeanIoU, "MeanDice": MeanDice}
    for name, cls in classes.items():
        cls.__name__ = cls.__qualname__ = name
        cls.__module__ = __name__
        keras.saving.register_keras_serializable(package="segops")(cls)
    return classes


_keras_metrics: dict[str, type] | None = None


def __getattr__(name: str) -> type:
    global _keras_metrics
    if name in KERAS_METRIC_NAMES:
        if _keras_metrics is None:
            _keras_metrics = _build_keras_metrics()
        return _keras_metrics[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
