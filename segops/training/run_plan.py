"""What a training run plans and returns: :class:`Plan` (this process's output directory, shards,
steps and starting epoch) and :class:`TrainResult` (what ``train()`` returns). Their own module so
that the loop and the end of a run (:mod:`segops.training.run_export`) both import them and not
each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segops.training.prepared import PreparedData
from segops.training.state import RunState


@dataclass
class TrainResult:
    out: str
    epochs_trained: int
    best_epoch: int
    best_val_mean_iou: float
    best_val_iou_per_class: dict[str, float | None]
    final_val_mean_iou: float
    corrupt_records: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Plan:
    """What this process trains: its output directory, its shards, the steps per epoch, and the
    epoch it starts from (after a resume)."""

    out: str
    data: PreparedData
    train_records: int
    coarse_records: int  # 0 when no coarse records are read
    steps: int
    precision: str
    scheme: str
    class_weights: list[float] | None
    run: RunState
    state: dict[str, Any] | None
    first_callbacks: list[Any] = field(default_factory=list)  # before the checkpoint (the budget's re-plan)
    lr_total_steps: int | None = None  # end of the lr decay, when not epochs * steps (a budget's plan)

    @property
    def initial_epoch(self) -> int:
        return self.state["epoch"] if self.state else 0
