"""The launcher's real call of a model before a run writes anything: the model is loaded as a
worker loads it and run on two small probe images through the pipeline's own path (padding,
tiling, batching, ``--tta flip``'s mirror images), so a missing operator, a wrong input, a batch
the graph cannot take or an output its card cannot read is one ModelError line before any table
version, staging directory or Beam temporary exists (:func:`call_once`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from segops.inference.sources import ModelSource
from segops.inference.tiling import predict_probabilities
from segops.models.export_dir import ModelError

if TYPE_CHECKING:
    from segops.inference.options import PredictOptions

PROBE_SIDE = 32  # pixels (rounded up to the stride) of a probe image for a model of any input size
PROBE_SEED = 20261206


def probe_images(size: tuple[int, int] | None, stride: int) -> list[np.ndarray]:
    """Two different uint8 RGB images: of the model's input ``size`` when it has one (it is
    resized to it anyway), else the smallest multiple of ``stride`` of at least PROBE_SIDE."""
    if size is None:
        side = math.ceil(PROBE_SIDE / stride) * stride
        size = (side, side)
    rng = np.random.default_rng(PROBE_SEED)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(2)]


def call_once(source: ModelSource, options: PredictOptions) -> str | None:
    """Load ``source`` and predict two probe images with ``options``; raises ModelError (one
    line) when that fails or gives what the run could not use. Returns what the user should be
    told once (a fixed batch), else None."""
    info = source.info
    try:
        model = source.load(options.tf_threads)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raises: the model cannot run here
        raise ModelError(f"{source.path}: loading it failed: {_one_line(exc)}") from exc
    prep = getattr(model, "preprocessing", None)
    images = probe_images(prep.size if prep is not None else None, info.stride)
    what = f"a test call on {len(images)} {'x'.join(map(str, images[0].shape[:2]))} image(s)"
    what += " and their mirror images (--tta flip)" if options.tta == "flip" else ""
    try:
        results = predict_probabilities(model, images, info.stride, options)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{source.path}: {what} failed: {_one_line(exc)}") from exc
    expected = info.num_classes + _unmapped(prep)
    for image, probs in zip(images, results, strict=True):
        if tuple(probs.shape) != (*image.shape[:2], expected):
            raise ModelError(f"{source.path}: {what} gave probabilities of shape {tuple(probs.shape)}; "
                             f"expected {(*image.shape[:2], expected)}")  # fmt: skip
        if isinstance(probs, np.ndarray) and not np.isfinite(probs).all():
            raise ModelError(f"{source.path}: {what} gave NaN or infinite probabilities")
    if prep is not None and prep.batch:
        return f"model {info.model_id} takes a fixed batch of {prep.batch}: segops calls it {prep.batch} image(s) at a time"
    return None


def _unmapped(prep: Any) -> int:
    """1 when a card maps some model classes nowhere (their probabilities get one more column)."""
    class_map = getattr(prep, "class_map", None)
    return int(class_map is not None and any(t < 0 for t in class_map))


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}{'...' if len(text) > 400 else ''}"
