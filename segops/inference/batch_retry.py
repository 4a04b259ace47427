"""One bad image never takes its batch down: :class:`RetryingModelHandler` runs a batch, and when
the model call fails, runs its images one at a time, so only the image that fails alone comes
out failed (a :class:`~segops.inference.stage_values.Prediction` with ``error`` set and no
probabilities; the pipeline dead-letters it with stage ``inference``).

Test-only hook: ``SEGOPS_TEST_CRASH_ON=inference:<basename>`` (segops.core.isolation) makes
every model call whose batch holds that image raise, as a model failing on one input would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from segops.core import isolation
from segops.inference.model import SegmentationModelHandler
from segops.inference.stage_values import ImageExample, Prediction


class InjectedModelFailure(RuntimeError):
    """Raised by the test hook only."""


class RetryingModelHandler(SegmentationModelHandler):
    """:class:`SegmentationModelHandler` whose failed batches are retried image by image."""

    def run_inference(
        self, batch: Sequence[ImageExample], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[Prediction]:
        try:
            for ex in batch:
                if isolation.should_crash("inference", ex.item.path):
                    raise InjectedModelFailure(f"test hook {isolation.CRASH_ENV} names {ex.item.rel}")
            return list(super().run_inference(batch, model, inference_args))
        except Exception as exc:  # noqa: BLE001 - any model failure: find the culprit
            if len(batch) > 1:
                return [p for ex in batch for p in self.run_inference([ex], model, inference_args)]
            reason = f"model call failed on this image alone: {type(exc).__name__}: {exc}"
            return [Prediction(batch[0], None, 0.0, reason)]  # type: ignore[arg-type]
