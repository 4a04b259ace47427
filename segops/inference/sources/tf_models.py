"""Model sources run by TensorFlow: a segops export (:class:`SegopsExport`, its
``serving_default`` signature as today), any other SavedModel with a serving signature and a
card (:class:`SavedModelSource`), and a ``.keras`` file with a card (:class:`KerasFileSource`,
loaded in Keras' safe mode). SavedModels are checked as protocol buffers before TensorFlow
loads them: the signature's inputs and outputs, no op that touches files or runs Python."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from segops.core.layout import MODEL_JSON, SAVED_MODEL_PB
from segops.inference.sources import card as cards
from segops.inference.sources.base import (
    ModelSource,
    PreparedModel,
    files_inside,
    pick_tensor,
    set_tf_threads,
)
from segops.models import export_dir
from segops.models.export_dir import ModelError


class ServingModel:
    """The exported ``serving_default`` signature behind a numpy-in, numpy-out ``predict``.

    Numpy at the boundary matters when Beam shares one model across processes
    (``share_model_across_processes``): calls then go through a proxy and only picklable
    values may cross it.
    """

    def __init__(self, model_dir: str, threads: int = 0) -> None:
        set_tf_threads(threads)
        self._fn = export_dir.load_serving_fn(model_dir)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._fn(images=images)["probabilities"].numpy()


@dataclass(frozen=True)
class SegopsExport(ModelSource):
    """A `segops train` export directory (or a train run naming one): model.json + SavedModel."""

    kind: ClassVar[str] = "segops-export"

    @classmethod
    def claims(cls, path: str) -> bool:
        return os.path.isfile(os.path.join(path, MODEL_JSON))

    @classmethod
    def open(cls, model_dir: str) -> SegopsExport:
        info = export_dir.load_info(model_dir)
        return cls(export_dir.resolve_export_dir(model_dir), info)

    def load(self, threads: int = 0) -> ServingModel:
        return ServingModel(self.path, threads)


def _dims(tensor_info: Any) -> list[int] | None:
    return None if tensor_info.tensor_shape.unknown_rank else [d.size for d in tensor_info.tensor_shape.dim]


@dataclass(frozen=True)
class SavedModelSource(cards.CardSource):
    """A SavedModel directory that is not a segops export: its ``card.signature`` is called with
    the card's preprocessing (float32 or uint8 input)."""

    kind: ClassVar[str] = "savedmodel"
    uint8_input: bool = False

    @classmethod
    def claims(cls, path: str) -> bool:
        return os.path.isfile(os.path.join(path, SAVED_MODEL_PB))

    @classmethod
    def open(cls, directory: str) -> SavedModelSource:
        from tensorflow.core.framework import types_pb2

        card = cards.read_card(cards.require_card(directory, "a SavedModel"))
        files = files_inside(directory)
        pb = os.path.join(directory, SAVED_MODEL_PB)
        graph = export_dir.read_saved_model(pb, "a SavedModel segops runs")
        sig = graph.signature_def.get(card.signature)
        if sig is None:
            raise ModelError(f"{pb}: no signature {card.signature!r} (it has {', '.join(sorted(graph.signature_def)) or 'none'}); "
                             f"name one in the card's signature field")  # fmt: skip
        input_name = pick_tensor(pb, "input", sig.inputs, card.input_name, "signature")
        output_name = pick_tensor(pb, "output", sig.outputs, card.output_name, "signature")
        image, out = sig.inputs[input_name], sig.outputs[output_name]
        prep = card.preprocessing
        dims = _dims(image)
        channel_axis = 3 if prep.layout == "NHWC" else 1
        if image.dtype not in (types_pb2.DT_FLOAT, types_pb2.DT_UINT8) or dims is None or len(dims) != 4 \
                or dims[channel_axis] not in (3, -1):  # fmt: skip
            raise ModelError(f"{pb}: input {input_name!r} is not a float32 or uint8 {prep.layout} image batch with 3 channels")
        uint8_input = image.dtype == types_pb2.DT_UINT8
        if uint8_input and (prep.mean or prep.std or prep.layout != "NHWC" or prep.value_range != "0..255"):
            raise ModelError(f"{pb}: input {input_name!r} is uint8: the card cannot set range, mean, std or NCHW for it")
        out_dims = _dims(out)
        if out.dtype != types_pb2.DT_FLOAT or (out_dims is not None and len(out_dims) != 4):
            raise ModelError(f"{pb}: output {output_name!r} is not a float32 [N, H, W, C] or [N, C, H, W] tensor")
        if out_dims is not None:
            card.refuse_channels(pb, f"output {output_name!r} has", out_dims[3 if prep.output_layout == "NHWC" else 1])
        export_dir.check_graph_ops(graph, pb)
        hashed = files if card.path in files else [*files, card.path]
        info = card.model_info(cls.kind, hashed, directory)
        return cls(directory, info, card, input_name, output_name, max(dims[0], 0), uint8_input)

    def load(self, threads: int = 0) -> PreparedModel:
        import tensorflow as tf

        assert self.card is not None
        set_tf_threads(threads)
        loaded = tf.saved_model.load(self.path)
        fn = loaded.signatures[self.card.signature]
        dtype = tf.uint8 if self.uint8_input else tf.float32

        def call(x: np.ndarray) -> np.ndarray:
            _ = loaded  # the signature does not keep its trackable owner alive
            if self.uint8_input:
                x = np.clip(np.rint(x), 0, 255)
            return fn(**{self.input_name: tf.constant(x, dtype)})[self.output_name].numpy()

        return self.prepared(call)


@dataclass(frozen=True)
class KerasFileSource(cards.CardSource):
    """A ``.keras`` file with a card, loaded in Keras' safe mode (no Lambda layer, no unsafe
    deserialisation)."""

    kind: ClassVar[str] = "keras"
    suffixes: ClassVar[tuple[str, ...]] = (".keras",)

    @classmethod
    def open(cls, path: str) -> KerasFileSource:
        card = cards.read_card(cards.require_card(path, "a .keras file"))
        model = export_dir.load_keras_file(path)
        prep = card.preprocessing
        if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.outputs[0].shape) != 4:
            raise ModelError(f"{path}: a segmentation model has one image input and one [N, H, W, C] output")
        card.refuse_channels(path, "its output has", model.outputs[0].shape[3 if prep.output_layout == "NHWC" else 1])
        hashed = [os.path.abspath(path), os.path.abspath(card.path)]
        info = card.model_info(cls.kind, hashed, os.path.dirname(os.path.abspath(path)))
        return cls(path, info, card, batch=model.inputs[0].shape[0] or 0)

    def load(self, threads: int = 0) -> PreparedModel:
        import keras

        assert self.card is not None
        set_tf_threads(threads)
        model = export_dir.load_keras_file(self.path)
        return self.prepared(lambda x: keras.ops.convert_to_numpy(model(x, training=False)))

