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
    s3://... or gs://... of any above   copied to a worker-local cache, then as above (RemoteSource)

Preprocessing comes from the model's own config (model.json, the preset's converter), else from
its card (:mod:`segops.inference.sources.card`). Every check runs in :func:`open_source`, before
anything is written; each failure is one :class:`~segops.models.export_dir.ModelError` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class RemoteSource(ModelSource):
    """A model on object storage: ``path`` is its URI, ``local`` the source opened from a copy in
    the local cache. Beam ships it to workers that share no disk with the launcher: :meth:`load`
    copies the model into the worker's own cache when the launcher's copy is not there."""

    local: ModelSource

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.local.kind

    def load(self, threads: int = 0) -> Any:
        local = self.local if os.path.exists(self.local.path) else _open_remote(self.path).local
        return local.load(threads)


def _open_remote(uri: str) -> RemoteSource:
    from segops.core import storage
    from segops.inference.sources.card import CARD_FILE, CARD_SUFFIX

    try:
        local = storage.local_copy(uri, companions=("+" + CARD_SUFFIX, CARD_FILE))
    except FileNotFoundError:
        raise ModelError(f"{uri}: no model there (no object, nor objects under it)") from None
    except OSError as exc:
        raise ModelError(f"{uri}: cannot copy the model from object storage: {exc}") from exc
    source = open_source(local)
    return RemoteSource(path=uri, info=source.info, local=source)


def open_source(path: str) -> ModelSource:
    """The model at ``path``, described and checked (nothing loaded that could run code); a path
    on object storage is opened from a local copy (:class:`RemoteSource`)."""
    from segops.core import fs
    from segops.inference.sources import keras_hub_preset, tf_models

    if fs.has_scheme(path):
        return _open_remote(path)
    if os.path.isfile(os.path.join(path, MODEL_JSON)):
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


__all__ = ["ModelError", "ModelSource", "RemoteSource", "open_source"]
