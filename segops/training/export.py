"""Exported models: the contract between ``segops train`` and ``segops infer``.

An *export directory* holds one model in two forms plus its description:

    model.keras      the Keras model (logits, float input in 0..255), for fine-tuning / Keras users
    saved_model/     TensorFlow SavedModel; signature ``serving_default`` takes
                     ``images``: uint8 [N, H, W, 3] and returns ``probabilities``: float32
                     [N, H, W, num_classes] (softmax). This is what ``segops infer`` and Beam's
                     RunInference load; it needs no segops code to run.
    model.json       architecture, classes, label table, input size, training options, metrics

``segops train OUT`` writes ``OUT/best/`` and ``OUT/final/`` (two export directories) and
``OUT/model.json`` naming the default one; :func:`resolve_export_dir` accepts either form. The
file names are :mod:`segops.core.layout`'s.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from segops import __version__
from segops.core import fs, labels
from segops.core.layout import KERAS_FILE, MODEL_JSON, SAVED_MODEL_DIR, SAVED_MODEL_PB

EXPORT_FORMAT_VERSION = 1


class ModelError(ValueError):
    """A model directory that is missing, incomplete or incompatible (fails the run at once)."""


@dataclass
class ModelInfo:
    architecture: str
    num_classes: int
    input_size: tuple[int, int]  # (height, width) the model was trained at
    stride: int  # input height/width must be a multiple of this (padding handles the rest)
    class_names: list[str] = field(default_factory=lambda: list(labels.CLASS_NAMES))
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_id: str = ""
    segops_version: str = __version__
    format_version: int = EXPORT_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model_id": self.model_id,
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "input_size": list(self.input_size),
            "stride": self.stride,
            "label_table": [
                {"name": lb.name, "id": lb.id, "train_id": lb.train_id, "color": list(lb.color)}
                for lb in labels.TRAIN_LABELS
            ],
            "training": self.training,
            "metrics": self.metrics,
            "segops_version": self.segops_version,
            "signature": {
                "name": "serving_default",
                "input": {"images": "uint8 [N, H, W, 3]"},
                "output": {"probabilities": f"float32 [N, H, W, {self.num_classes}]"},
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(
            architecture=data["architecture"],
            num_classes=int(data["num_classes"]),
            input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
            stride=int(data.get("stride", 1)),
            class_names=list(data.get("class_names", labels.CLASS_NAMES)),
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            model_id=data.get("model_id", ""),
            segops_version=data.get("segops_version", ""),
            format_version=int(data.get("format_version", 0)),
        )


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        h.update(w.path.encode())
        h.update(memoryview(w.numpy()).cast("B"))
    return h.hexdigest()[:16]


def export_model(model: Any, out_dir: str, info: ModelInfo) -> ModelInfo:
    """Write ``model.keras``, ``saved_model/`` and ``model.json`` into ``out_dir``.

    ``model`` maps float images in 0..255 (N, H, W, 3) to logits (N, H, W, C). The model id is
    a digest of the weights, so the same weights always get the same id (inference outputs and
    Parquet rows are keyed by it).
    """
    import tensorflow as tf
    from keras import export as keras_export

    os.makedirs(out_dir, exist_ok=True)
    info.model_id = info.model_id or f"{info.architecture}-{_weights_digest(model)}"
    model.save(os.path.join(out_dir, KERAS_FILE))

    archive = keras_export.ExportArchive()
    archive.track(model)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(tf.cast(images, tf.float32), training=False)
        return {"probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}

    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
    )
    saved = os.path.join(out_dir, SAVED_MODEL_DIR)
    tmp = saved + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    archive.write_out(tmp, verbose=False)
    if tf.io.gfile.exists(saved):
        tf.io.gfile.rmtree(saved)
    tf.io.gfile.rename(tmp, saved)

    fs.write_json_atomic(os.path.join(out_dir, MODEL_JSON), info.to_json())
    return info


def _read_json(path: str) -> dict[str, Any]:
    try:
        return fs.read_json(path)
    except FileNotFoundError:
        raise ModelError(f"no {MODEL_JSON} at {path}: pass an output directory of `segops train`") from None
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})") from exc


def resolve_export_dir(model_dir: str) -> str:
    """Return the export directory for ``model_dir``: itself, or the default export of a train run.

    Read through Beam's FileSystems, so a model on gs:// (or any Beam filesystem) works too.
    """
    data = _read_json(fs.join(model_dir, MODEL_JSON))
    if "default_export" in data:  # a train run directory pointing to best/ or final/
        return resolve_export_dir(fs.join(model_dir, data["default_export"]))
    return model_dir


def load_info(model_dir: str) -> ModelInfo:
    export_dir = resolve_export_dir(model_dir)
    data = _read_json(fs.join(export_dir, MODEL_JSON))
    try:
        info = ModelInfo.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{export_dir}/{MODEL_JSON} is not a segops model description ({exc})") from exc
    if info.format_version != EXPORT_FORMAT_VERSION:
        raise ModelError(
            f"{export_dir} was exported with format {info.format_version}; this segops reads "
            f"format {EXPORT_FORMAT_VERSION}: re-export it with this version"
        )
    if not fs.exists(fs.join(export_dir, SAVED_MODEL_DIR, SAVED_MODEL_PB)):
        raise ModelError(f"{export_dir} has no {SAVED_MODEL_DIR}/{SAVED_MODEL_PB}: the export is incomplete")
    return info


def check_compatible(info: ModelInfo) -> None:
    """Refuse a model whose classes do not match the label table segops evaluates against."""
    if info.num_classes != labels.NUM_CLASSES or list(info.class_names) != list(labels.CLASS_NAMES):
        raise ModelError(
            f"model predicts {info.num_classes} classes {info.class_names[:3]}...; the Cityscapes "
            f"label table has {labels.NUM_CLASSES}: this model cannot be evaluated against it"
        )


def load_serving_fn(model_dir: str) -> Any:
    """Load the SavedModel signature: ``fn(images=uint8 tensor)['probabilities']``."""
    import tensorflow as tf

    export_dir = resolve_export_dir(model_dir)
    loaded = tf.saved_model.load(fs.join(export_dir, SAVED_MODEL_DIR))  # TF reads gs:// itself
    fn = loaded.signatures["serving_default"]
    fn._segops_keepalive = loaded  # the signature does not keep its trackable owner alive
    return fn
