"""Exported models: the contract between ``segops train`` and every stage that runs a model
(``infer``, ``report``, ``review``). It lives beside the networks, under the training and
inference layers, so that inference never imports training.

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
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from segops import __version__
from segops.core import fs, labels
from segops.core.label_sets import LabelSet, LabelSetError, recorded_label_set
from segops.core.layout import ATOMIC_TMP_INFIX, KERAS_FILE, MODEL_JSON, SAVED_MODEL_DIR, SAVED_MODEL_PB

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
    label_set: dict[str, Any] | None = None  # LabelSet.to_json() of the classes; None: Cityscapes

    @property
    def labels(self) -> LabelSet:
        """The label set the model's classes are in (ModelError for a corrupt record)."""
        try:
            return recorded_label_set(self.label_set, MODEL_JSON)
        except LabelSetError as exc:
            raise ModelError(str(exc)) from exc

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
                for lb in self.labels.train_labels
            ],
            "label_set": self.labels.to_json(),
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
            label_set=data.get("label_set"),
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
    # a temporary name then a rename, as for every segops output: a full disk leaves no half file
    keras_tmp = os.path.join(out_dir, f"model{ATOMIC_TMP_INFIX}{uuid.uuid4().hex}.keras")
    try:
        model.save(keras_tmp)
        tf.io.gfile.rename(keras_tmp, os.path.join(out_dir, KERAS_FILE), overwrite=True)
    finally:
        if tf.io.gfile.exists(keras_tmp):
            tf.io.gfile.remove(keras_tmp)

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


def is_plain_name(name: Any) -> bool:
    """A directory name inside the model directory: no separators, no '..', no scheme."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:")


def check_inside(root: str, path: str) -> None:
    """Refuse ``path`` when it resolves (symlinks followed) outside ``root`` (local paths; an
    object store has no symlinks)."""
    if fs.has_scheme(path):
        return
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise ModelError(f"{path} resolves to {real}, outside the model directory {root}: refusing to load it")


def resolve_export_dir(model_dir: str) -> str:
    """Return the export directory for ``model_dir``: itself, or the default export of a train run.

    A train run's ``model.json`` may only name a directory inside it (``best``, ``final``) that
    holds an export; a name with ``/`` or ``..``, an absolute path, a symlink leading outside or a
    missing export is refused (ModelError), so a model directory cannot make segops load files
    from elsewhere. Read through Beam's FileSystems, so a model on gs:// works too.
    """
    path = fs.join(model_dir, MODEL_JSON)
    data = _read_json(path)
    if "default_export" not in data:
        return model_dir
    name = data["default_export"]
    if not is_plain_name(name):
        raise ModelError(f"{path}: default_export {name!r} is not a directory name inside {model_dir} "
                         f"(e.g. 'best'); refusing a path that leads out of the model directory")  # fmt: skip
    export_dir = fs.join(model_dir, name)
    check_inside(model_dir, export_dir)
    if not fs.exists(fs.join(export_dir, MODEL_JSON)):
        raise ModelError(f"{path} names the export {name!r}, but {export_dir} holds no {MODEL_JSON}: "
                         f"the export is missing or incomplete")  # fmt: skip
    if "default_export" in _read_json(fs.join(export_dir, MODEL_JSON)):
        raise ModelError(f"{export_dir} is not an export directory (its {MODEL_JSON} names another one)")
    return export_dir


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
    saved_model = fs.join(export_dir, SAVED_MODEL_DIR, SAVED_MODEL_PB)
    if not fs.exists(saved_model):
        raise ModelError(f"{export_dir} has no {SAVED_MODEL_DIR}/{SAVED_MODEL_PB}: the export is incomplete")
    check_inside(export_dir, fs.join(export_dir, SAVED_MODEL_DIR))
    check_inside(export_dir, saved_model)
    check_saved_model(saved_model)
    return info


def check_compatible(info: ModelInfo) -> None:
    """Refuse a model whose classes do not match the label set it records (Cityscapes when it
    records none) that segops evaluates against."""
    ls = info.labels
    if info.num_classes != ls.num_classes or list(info.class_names) != list(ls.class_names):
        raise ModelError(
            f"model predicts {info.num_classes} classes {info.class_names[:3]}...; the {ls.table_title} "
            f"has {ls.num_classes}: this model cannot be evaluated against it"
        )


# Ops that read or write arbitrary files or call back into Python: a segops export has none of
# them (its saver functions use only SaveV2/RestoreV2 on its own variables/ directory)
FORBIDDEN_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc", "ReadFile", "WriteFile", "MatchingFiles",
                           "ImmutableConst", "LoadAndRemapMatrix", "DebugIdentityV3", "PrintV2"})  # fmt: skip


def read_saved_model(path: str, expected: str = "a segops export") -> Any:
    """The one meta graph of ``saved_model.pb`` at ``path``, parsed as a protocol buffer (nothing
    loaded or run); ModelError when it is not a SavedModel or holds several graphs."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(fs.read_bytes(path))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelError(f"{path} is not a SavedModel ({type(exc).__name__}: {exc})") from exc
    if len(saved.meta_graphs) != 1:
        raise ModelError(f"{path} holds {len(saved.meta_graphs)} meta graphs; {expected} has one")
    return saved.meta_graphs[0]


def check_graph_ops(graph: Any, path: str) -> None:
    """Refuse a SavedModel graph holding an op of :data:`FORBIDDEN_OPS` (functions included)."""
    ops = {node.op for node in graph.graph_def.node}
    for function in graph.graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    bad = sorted(ops & FORBIDDEN_OPS)
    if bad:
        raise ModelError(f"{path} holds ops that read/write files or run Python ({', '.join(bad)}): refusing to load it")


def check_saved_model(path: str) -> None:
    """Refuse (ModelError) a ``saved_model.pb`` whose ``serving_default`` signature is not ours
    (``images`` uint8 [N,H,W,3] -> ``probabilities`` float32 [N,H,W,C]) or whose graph holds an
    op that reads or writes files or runs Python (:data:`FORBIDDEN_OPS`). Read as a protocol
    buffer before TensorFlow loads anything."""
    from tensorflow.core.framework import types_pb2

    graph = read_saved_model(path)
    sig = graph.signature_def.get("serving_default")
    ok = sig is not None and set(sig.inputs) == {"images"} and set(sig.outputs) == {"probabilities"}
    if ok:
        images, probs = sig.inputs["images"], sig.outputs["probabilities"]
        dims = [d.size for d in images.tensor_shape.dim]
        ok = images.dtype == types_pb2.DT_UINT8 and len(dims) == 4 and dims[3] == 3 and probs.dtype == types_pb2.DT_FLOAT
    if not ok:
        raise ModelError(f"{path}: no serving_default signature taking images uint8 [N,H,W,3] and returning "
                         f"probabilities float32: not a segops export")  # fmt: skip
    check_graph_ops(graph, path)


def config_values(config: Any, key: str) -> set[str]:
    """Every string value of ``key`` (``class_name``, ``module``) in a Keras config, nested
    layers included."""
    if isinstance(config, dict):
        found = {config[key]} if isinstance(config.get(key), str) else set()
        return found.union(*(config_values(v, key) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(config_values(v, key) for v in config))
    return set()


def load_keras_model(model_dir: str) -> Any:
    """The export's ``model.keras`` (for fine-tuning or Keras users), loaded in Keras' safe mode
    (:func:`load_keras_file`)."""
    export_dir = resolve_export_dir(model_dir)
    path = fs.join(export_dir, KERAS_FILE)
    check_inside(export_dir, path)
    if not fs.exists(path):
        raise ModelError(f"{export_dir} has no {KERAS_FILE}")
    return load_keras_file(path)


def check_keras_config(config: Any, path: str) -> None:
    """Refuse a Keras config holding a Lambda layer (Python code inside the model file)."""
    if "Lambda" in config_values(config, "class_name"):
        raise ModelError(f"{path} contains a Lambda layer (Python code in the model file): refusing to load it")


def load_keras_file(path: str) -> Any:
    """A ``.keras`` file loaded in Keras' safe mode: a Lambda layer or any other unsafe object is
    refused with a ModelError and never run."""
    import zipfile

    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path} is not a Keras model file ({exc})") from exc
    check_keras_config(config, path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path} cannot be loaded safely: {exc}") from exc


def load_serving_fn(model_dir: str) -> Any:
    """Load the SavedModel signature: ``fn(images=uint8 tensor)['probabilities']``, after
    :func:`check_saved_model`; nothing but that signature is ever called."""
    import tensorflow as tf

    export_dir = resolve_export_dir(model_dir)
    check_saved_model(fs.join(export_dir, SAVED_MODEL_DIR, SAVED_MODEL_PB))
    loaded = tf.saved_model.load(fs.join(export_dir, SAVED_MODEL_DIR))  # TF reads gs:// itself
    fn = loaded.signatures["serving_default"]
    fn._segops_keepalive = loaded  # the signature does not keep its trackable owner alive
    return fn
