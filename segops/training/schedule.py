"""The learning-rate schedule of ``--lr-schedule poly``: a linear warm-up from ``lr / 10`` over
the first ``warmup_steps`` steps, then the poly decay ``lr * (1 - t)^power`` to 0 over the
remaining steps (t: the share of the decay steps done). Backend-neutral (``keras.ops``),
registered for checkpoints.

The total is a variable: a ``--time-budget`` run shortens or lengthens it between epochs to the
pace it measures (:mod:`segops.training.budget`), so the decay ends at the deadline; the value
in force is what a checkpoint's config records.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

WARMUP_START = 0.1  # warm-up starts at this fraction of the peak learning rate


@keras.saving.register_keras_serializable(package="segops")
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``lr`` reached linearly from ``WARMUP_START * lr`` at step ``warmup_steps``, then
    ``lr * (1 - (step - warmup) / (total - warmup))^power``, 0 from ``total_steps`` on."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, power: float = 0.9) -> None:
        self.lr = float(lr)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.power = float(power)
        self._total = keras.Variable(float(self._clamp(total_steps)), dtype="float32", trainable=False,
                                     name="lr_total_steps")  # fmt: skip

    def _clamp(self, total_steps: int) -> int:
        return max(int(total_steps), self.warmup_steps + 1)

    @property
    def total_steps(self) -> int:
        return int(keras.ops.convert_to_numpy(self._total))

    def set_total_steps(self, total_steps: int) -> None:
        """Move the end of the decay (steps already taken keep the rates they had)."""
        self._total.assign(float(self._clamp(total_steps)))

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        ramp = WARMUP_START + (1.0 - WARMUP_START) * step / max(warmup, 1.0)
        done = ops.clip((step - warmup) / (ops.convert_to_tensor(self._total) - warmup), 0.0, 1.0)
        decay = ops.power(1.0 - done, self.power)
        return self.lr * ops.where(step < warmup, ramp, decay)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "power": self.power}  # fmt: skip
