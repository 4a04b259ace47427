"""The model side of inference: :class:`SegmentationModelHandler` (the Beam ``ModelHandler``
RunInference uses, for any :mod:`model source <segops.inference.sources>`) and :class:`Predictor`
(a run's predictions recomputed for a few images, as the report's gallery needs them).
:class:`ServingModel` (a segops export's ``serving_default`` signature behind a numpy
``predict``) lives with the other TensorFlow sources and is re-exported here."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from segops.inference import prior
from segops.inference.options import PredictOptions
from segops.inference.sources import ModelSource, open_source
from segops.inference.sources.tf_models import ServingModel
from segops.inference.stage_values import ImageExample, Prediction
from segops.inference.tiling import predict_probabilities
from segops.models import export_dir

__all__ = ["METRICS_NAMESPACE", "Predictor", "SegmentationModelHandler", "ServingModel"]

METRICS_NAMESPACE = "segops_infer"  # Beam metrics of a run: RunInference's and segops' counters


class SegmentationModelHandler(ModelHandler):
    """Beam ``ModelHandler`` for any model source (a segops export's SavedModel, ONNX, Keras,
    a keras-hub preset...).

    Beam's built-in ``TFModelHandlerNumpy`` loads with ``tf.keras.models.load_model`` and calls
    the model on a float batch; our sources take uint8 images and return probabilities, so this
    handler loads the source's own predictor (:meth:`ModelSource.load`). RunInference keeps one
    loaded model per worker process (Beam's ``shared.Shared``), or one per machine shared by all
    processes with ``share_model_across_processes``.
    """

    def __init__(self, source: ModelSource, options: PredictOptions | None = None) -> None:
        options = options or PredictOptions()
        super().__init__(min_batch_size=1, max_batch_size=options.batch_size,
                         large_model=options.share_model_across_processes)  # fmt: skip
        self._source = source
        self._stride = source.info.stride
        self._options = options

    def load_model(self) -> Any:
        model = self._source.load(self._options.tf_threads)
        return prior.corrected(model, self._source.info.training, self._options.prior_correction)

    def run_inference(
        self, batch: Sequence[ImageExample], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[Prediction]:
        if not batch:
            return []
        start = time.perf_counter()
        probs = predict_probabilities(model, [ex.rgb for ex in batch], self._stride, self._options)
        total_pixels = sum(ex.rgb.shape[0] * ex.rgb.shape[1] for ex in batch)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        return [
            Prediction(ex, p, elapsed_ms * ex.rgb.shape[0] * ex.rgb.shape[1] / total_pixels)
            for ex, p in zip(batch, probs, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[ImageExample]) -> int:
        return sum(ex.rgb.nbytes for ex in batch)  # not len(pickle.dumps(batch)): 6 MB per frame

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class Predictor:
    """The argmax of model ``model_id`` for single images, computed exactly as an infer run with
    ``options`` computed it. The model is looked up in ``candidates`` (model directories);
    ``reason`` says why when none holds it (then calls return None)."""

    def __init__(self, model_id: str, candidates: Sequence[str], options: PredictOptions) -> None:
        self.options = options
        self.model: Any = None
        self.stride = 1
        self.reason = ""
        for candidate in candidates:
            with contextlib.suppress(export_dir.ModelError, OSError, ValueError):
                source = open_source(candidate)
                if source.info.model_id == model_id:
                    self.stride = source.info.stride
                    self.model = prior.corrected(source.load(), source.info.training, options.prior_correction)
                    return
        self.reason = f"model {model_id} not found in {', '.join(candidates) or 'no model directory'}"

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        if self.model is None:
            return None
        probs = predict_probabilities(self.model, [rgb], self.stride, self.options)[0]
        return probs.argmax(axis=2).astype(np.uint8)
