"""The model side of inference: :class:`ServingModel` (the exported ``serving_default``
signature behind a numpy ``predict``), :class:`SegmentationModelHandler` (the Beam
``ModelHandler`` RunInference uses) and :class:`Predictor` (a run's predictions recomputed for a
few images, as the report's gallery needs them)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from segops.inference.examples import ImageExample, Prediction
from segops.inference.options import PredictOptions
from segops.inference.tiling import predict_probabilities
from segops.models import export_dir

LOG = logging.getLogger(__name__)


class ServingModel:
    """The exported ``serving_default`` signature behind a numpy-in, numpy-out ``predict``.

    Numpy at the boundary matters when Beam shares one model across processes
    (``share_model_across_processes``): calls then go through a proxy and only picklable
    values may cross it.
    """

    def __init__(self, model_dir: str, threads: int = 0) -> None:
        import tensorflow as tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TF already initialised in this process: keep its pools
                LOG.info("TensorFlow already initialised; --tf-threads not applied in this process")
        self._fn = export_dir.load_serving_fn(model_dir)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._fn(images=images)["probabilities"].numpy()


class SegmentationModelHandler(ModelHandler):
    """Beam ``ModelHandler`` for a segops export directory (SavedModel ``serving_default``).

    Beam's built-in ``TFModelHandlerNumpy`` loads with ``tf.keras.models.load_model`` and calls
    the model on a float batch; our export's callable is a signature with a uint8 keyword input
    returning a dict, so this handler loads it with :func:`segops.models.export_dir.load_serving_fn`
    instead. RunInference keeps one loaded model per worker process (Beam's ``shared.Shared``),
    or one per machine shared by all processes with ``share_model_across_processes``.
    """

    def __init__(self, model_dir: str, stride: int, options: PredictOptions | None = None) -> None:
        options = options or PredictOptions()
        super().__init__(min_batch_size=1, max_batch_size=options.batch_size,
                         large_model=options.share_model_across_processes)  # fmt: skip
        self._model_dir = model_dir
        self._stride = stride
        self._options = options

    def load_model(self) -> ServingModel:
        return ServingModel(self._model_dir, self._options.tf_threads)

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
        return "segops_infer"


class Predictor:
    """The argmax of model ``model_id`` for single images, computed exactly as an infer run with
    ``options`` computed it. The model is looked up in ``candidates`` (model directories);
    ``reason`` says why when none holds it (then calls return None)."""

    def __init__(self, model_id: str, candidates: Sequence[str], options: PredictOptions) -> None:
        self.options = options
        self.model: ServingModel | None = None
        self.stride = 1
        self.reason = ""
        for candidate in candidates:
            with contextlib.suppress(export_dir.ModelError, OSError, ValueError):
                info = export_dir.load_info(candidate)
                if info.model_id == model_id:
                    self.stride = info.stride
                    self.model = ServingModel(candidate)  # resolves the export dir itself
                    return
        self.reason = f"model {model_id} not found in {', '.join(candidates) or 'no model directory'}"

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        if self.model is None:
            return None
        probs = predict_probabilities(self.model, [rgb], self.stride, self.options)[0]
        return probs.argmax(axis=2).astype(np.uint8)
