"""Model sources: every kind of model `segops infer`, `report` and `review` run, behind one
interface (:class:`~segops.inference.sources.base.ModelSource`: which paths a kind claims, how it
opens one, and ``load()`` -> ``predict(uint8 [N,H,W,3]) -> float32 probabilities [N,H,W,C]``).
:func:`open_source` asks the kinds of :data:`SOURCES`, in order, which one claims the path:

    s3://... or gs://... of any below   copied to a worker-local cache, then as below (RemoteSource)
    directory with model.json           a segops export or train run (tf_models.SegopsExport)
    directory with metadata.json +      a keras-hub ImageSegmenter preset (keras_hub_preset)
      task.json
    directory with saved_model.pb       a TensorFlow SavedModel + card.json (tf_models)
    *.onnx file                         run by onnxruntime, + card (onnx_model)
    *.keras file                        Keras safe mode, + card (tf_models)
    *.tflite file                       run by LiteRT, + card (litert_model)

and a directory holding one file a kind claims by its suffix is that file. A new kind is one
module with its class, and its entry in :data:`SOURCES`.

Preprocessing comes from the model's own config (model.json, the preset's converter), else from
its card (:mod:`segops.inference.sources.card`). Every check runs in :func:`open_source`, before
anything is written; each failure is one :class:`~segops.models.export_dir.ModelError` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from segops.core import fs
from segops.inference.sources.base import ModelSource
from segops.inference.sources.keras_hub_preset import KerasHubPreset
from segops.inference.sources.litert_model import LiteRTSource
from segops.inference.sources.onnx_model import OnnxSource
from segops.inference.sources.tf_models import KerasFileSource, SavedModelSource, SegopsExport
from segops.models import export_dir
from segops.models.export_dir import ModelError


@dataclass(frozen=True)
class RemoteSource(ModelSource):
    """A model on object storage: ``path`` is its URI, ``local`` the source opened from a copy in
    the local cache. Beam ships it to workers that share no disk with the launcher: :meth:`load`
    copies the model into the worker's own cache when the launcher's copy is not there."""

    local: ModelSource

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.local.kind

    @classmethod
    def claims(cls, path: str) -> bool:
        return fs.has_scheme(path)

    @classmethod
    def open(cls, path: str) -> RemoteSource:
        return _open_remote(path)

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


# Asked in order; the first kind that claims a path opens it (a segops export's directory may
# also hold a SavedModel: model.json decides first).
SOURCES: tuple[type[ModelSource], ...] = (
    RemoteSource,
    SegopsExport,
    KerasHubPreset,
    SavedModelSource,
    OnnxSource,
    KerasFileSource,
    LiteRTSource,
)
FILE_SUFFIXES: tuple[str, ...] = tuple(s for kind in SOURCES for s in kind.suffixes)


def open_source(path: str) -> ModelSource:
    """The model at ``path``, described and checked (nothing loaded that could run code); a path
    on object storage is opened from a local copy (:class:`RemoteSource`)."""
    for kind in SOURCES:
        if kind.claims(path):
            return kind.open(path)
    if os.path.isfile(path):
        raise ModelError(f"{path} is not a model file segops runs ({' or '.join(FILE_SUFFIXES)}; or pass a model directory)")
    if os.path.isdir(path):
        model_files = sorted(n for n in os.listdir(path) if n.endswith(FILE_SUFFIXES) and os.path.isfile(os.path.join(path, n)))
        if len(model_files) == 1:
            model_file = os.path.join(path, model_files[0])
            export_dir.check_inside(path, model_file)
            return open_source(model_file)
        if len(model_files) > 1:
            raise ModelError(f"{path} holds several model files ({', '.join(model_files)}): pass the one to run")
    return SegopsExport.open(path)  # the export's own message: no model.json at ...


__all__ = ["FILE_SUFFIXES", "SOURCES", "ModelError", "ModelSource", "RemoteSource", "open_source"]
