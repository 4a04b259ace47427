"""Model sources: every kind of model `segops infer`, `report` and `review` run, behind one
interface (:class:`~segops.inference.sources.base.ModelSource`: id, classes, stride, and
``load()`` -> ``predict(uint8 [N,H,W,3]) -> float32 probabilities [N,H,W,C]``), chosen by
:func:`open_source` from what the model path is:

    directory with model.json           a segops export or train run (tf_models.SegopsExport)
    directory with metadata.json +      a keras-hub ImageSegmenter preset (keras_hub_preset)
      task.json
    directory with saved_model.pb       a TensorFlow SavedModel + card.json (tf_models)
    *.onnx file                         run by onnxruntime, + card (onnx_model)
    *.keras file                        Keras safe mode, + card (tf_models)
    directory holding one .onnx or      that file, its card beside it or card.json
      .keras file

Preprocessing comes from the model's own config (model.json, the preset's converter), else from
its card (:mod:`segops.inference.sources.card`). Every check runs in :func:`open_source`, before
anything is written; each failure is one :class:`~segops.models.export_dir.ModelError` line.
"""

from __future__ import annotations

import os

from segops.core.layout import MODEL_JSON
from segops.inference.sources.base import ModelSource
from segops.models import export_dir
from segops.models.export_dir import ModelError

FILE_SUFFIXES = (".onnx", ".keras")


def _open_file(path: str) -> ModelSource:
    if path.endswith(".onnx"):
        from segops.inference.sources.onnx_model import OnnxSource

        return OnnxSource.open(path)
    from segops.inference.sources.tf_models import KerasFileSource

    return KerasFileSource.open(path)


def open_source(path: str) -> ModelSource:
    """The model at ``path``, described and checked (nothing loaded that could run code)."""
    from segops.core import fs
    from segops.inference.sources import keras_hub_preset, tf_models

    if fs.has_scheme(path) or os.path.isfile(os.path.join(path, MODEL_JSON)):
        return tf_models.SegopsExport.open(path)
    if os.path.isfile(path):
        if not path.endswith(FILE_SUFFIXES):
            raise ModelError(f"{path} is not a model file segops runs (.onnx or .keras; or pass a model directory)")
        return _open_file(path)
    if os.path.isdir(path):
        if keras_hub_preset.is_preset_dir(path):
            return keras_hub_preset.KerasHubPreset.open(path)
        if tf_models.is_saved_model_dir(path):
            return tf_models.SavedModelSource.open(path)
        model_files = sorted(name for name in os.listdir(path) if name.endswith(FILE_SUFFIXES))
        if len(model_files) == 1:
            model_file = os.path.join(path, model_files[0])
            export_dir.check_inside(path, model_file)
            return _open_file(model_file)
        if len(model_files) > 1:
            raise ModelError(f"{path} holds several model files ({', '.join(model_files)}): pass the one to run")
    return tf_models.SegopsExport.open(path)  # the export's own message: no model.json at ...


__all__ = ["ModelError", "ModelSource", "open_source"]
