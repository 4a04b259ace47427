"""``segops train --time-budget MINUTES``: the whole command (start-up, training, validation,
export) in a wall-clock budget.

The run is planned once, up front: a probe model (built and compiled as the real one) takes a
few training steps on the real input pipeline and one validation batch, which gives the step
time, the validation time and the tracing overhead on *this* machine; :func:`plan_budget` then
turns what is left of the budget into a number of steps, an evaluation cadence (``epochs`` of
``steps_per_epoch`` steps, validated after each) and the warm-up. The plan becomes ordinary
``--epochs`` / ``--steps-per-epoch`` values and the total of the warm-up + poly schedule.

A probe's few steps do not see the steady state (tf.data's buffers were filled while the model
traced; a shared machine's pace drifts), so after every epoch :func:`deadline_guard` re-plans
(:func:`replan_budget`): the last epoch that still ends in time at the measured pace becomes the end of the lr decay
(:meth:`segops.training.schedule.WarmupPolyDecay.set_total_steps`) and of the run. The plan in
force is recorded in ``checkpoints/state.json`` and ``model.json``; ``--resume`` finishes it
without probing or re-planning (it only stops if time runs out). Within an epoch, a pace that
slows after the last re-plan stops the run at the step that still leaves time for the epoch's
validation and the export (:func:`out_of_time`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from segops.training.options import TrainError, TrainOptions

log = logging.getLogger(__name__)

PROBE_STEPS = 5  # training steps the probe times (the first, traced, is not counted)
EVAL_SHARE = 0.08  # validation may take this share of the training time
MAX_VALIDATIONS = 20
MIN_VALIDATIONS = 2  # one mid-way (a first re-plan, a best epoch to compare with) and one at the end
MAX_GROWTH = 1.5  # a re-plan may lengthen the run to this many times the probe's epochs
MIN_STEPS = 1
PARTIAL_EPOCH = 0.25  # a shortened last epoch under a budget trains at least this share of an epoch
CHECKPOINT_S = 2.0  # writing a checkpoint and state.json after each validation
# Export: the float32 copy, model.keras and one SavedModel (best = final when the last epoch is
# the best; otherwise a second export): this many times the traced first step, at least EXPORT_MIN_S.
# Why 2.0: docs/benchmarks.md, "Measurements formerly in docstrings".
EXPORT_TRACES = 2.0
EXPORT_MIN_S = 5.0


@dataclass(frozen=True)
class Probe:
    """What the probe measured on this machine (seconds)."""

    step_s: float  # one training step, median of the untraced ones, input pipeline included
    first_step_s: float  # the first step: tracing + one step
    eval_batch_s: float  # one validation batch (after its tracing)
    eval_first_s: float  # the first validation batch (tracing included)
    val_batches: int


@dataclass(frozen=True)
class BudgetPlan:
    """The steps and cadence that fit a budget. ``epochs * steps_per_epoch`` steps, a
    validation after each epoch, ``warmup_steps`` of linear warm-up."""

    budget_s: float
    startup_s: float  # before the real model was built (imports, input checks, the probe)
    reserve_s: float  # kept for tracing the real model and exporting
    export_s: float  # the export's share of reserve_s (what must be left after the last epoch)
    step_s: float
    eval_s: float  # one full validation pass
    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    last_step: int = 0  # a re-plan's shortened last epoch ends at this step (0: at the end of an epoch)

    @property
    def total_steps(self) -> int:
        return self.last_step or self.epochs * self.steps_per_epoch

    def describe(self) -> str:
        return (f"budget {self.budget_s / 60:g} min: ~{self.total_steps} steps of {self.step_s:.2f} s, "
                f"validation every {self.steps_per_epoch} steps ({self.epochs} x {self.eval_s:.0f} s), "
                f"warm-up {self.warmup_steps} steps; start-up and probe took {self.startup_s:.0f} s, "
                f"{self.reserve_s:.0f} s kept for tracing and export")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BudgetPlan:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def apply(self, opts: TrainOptions, room: bool) -> TrainOptions:
        """``opts`` with the plan's steps per epoch and epochs (what the loop trains); ``room``:
        up to :data:`MAX_GROWTH` times the epochs, for a pace faster than the probe's."""
        epochs = math.ceil(self.epochs * MAX_GROWTH) if room else self.epochs
        optim = dataclasses.replace(opts.optim, epochs=epochs, steps_per_epoch=self.steps_per_epoch)
        return dataclasses.replace(opts, optim=optim)


def plan_budget(budget_s: float, elapsed_s: float, probe: Probe, warmup: float, export: bool = True) -> BudgetPlan:
    """Fit training into ``budget_s`` seconds of which ``elapsed_s`` are gone: reserve the
    real model's tracing and the export, give validation :data:`EVAL_SHARE` of the training
    time (at least two passes when they fit, else one, at the end), and train for the rest.
    The example: 10 minutes, 30 s gone; the probe took 0.5 s a step, 8 s for the first (traced).

    Example:
        >>> probe = Probe(step_s=0.5, first_step_s=8.0, eval_batch_s=0.2, eval_first_s=3.0, val_batches=10)
        >>> plan = plan_budget(600, 30, probe, warmup=0.05)
        >>> plan.epochs, plan.steps_per_epoch, plan.total_steps, plan.warmup_steps
        (10, 100, 1000, 50)
        >>> print(plan.describe())
        budget 10 min: ~1000 steps of 0.50 s, validation every 100 steps (10 x 4 s), warm-up 50 steps; start-up and probe took 30 s, 26 s kept for tracing and export
    """
    trace_s = max(probe.first_step_s - probe.step_s, 0.0) + max(probe.eval_first_s - probe.eval_batch_s, 0.0)
    export_s = max(EXPORT_MIN_S, EXPORT_TRACES * probe.first_step_s) if export else 0.0  # --no-export: none
    reserve = trace_s + export_s
    available = budget_s - elapsed_s - reserve
    eval_s = probe.eval_batch_s * probe.val_batches + CHECKPOINT_S
    validations = int(min(MAX_VALIDATIONS, max(MIN_VALIDATIONS, EVAL_SHARE * available // max(eval_s, 1e-6))))
    total = int((available - validations * eval_s) // probe.step_s)
    if total < MIN_STEPS * validations:
        validations = 1
        total = int((available - eval_s) // probe.step_s)
    if total < MIN_STEPS:
        raise TrainError(
            f"--time-budget {budget_s / 60:g} min leaves no time to train: start-up and the probe took "
            f"{elapsed_s:.0f} s, tracing and export need ~{reserve:.0f} s, one validation {eval_s:.0f} s and "
            f"one step {probe.step_s:.1f} s; give a larger budget"
        )
    steps_per_epoch = max(total // validations, 1)
    total = steps_per_epoch * validations
    return BudgetPlan(budget_s=budget_s, startup_s=elapsed_s, reserve_s=reserve, export_s=export_s,
                      step_s=probe.step_s, eval_s=eval_s,
                      epochs=validations, steps_per_epoch=steps_per_epoch,
                      warmup_steps=round(warmup * total))  # fmt: skip


def replan_budget(plan: BudgetPlan, epochs_done: int, epoch_s: float, left_s: float, max_epochs: int) -> BudgetPlan:
    """``plan`` re-planned after ``epochs_done`` epochs that took ``epoch_s`` seconds each
    (validation included), with ``left_s`` seconds left to train: the whole epochs that still fit
    (``max_epochs`` in all at most), then a shortened last epoch for the rest of the time, its
    validation included, when it holds at least :data:`PARTIAL_EPOCH` of an epoch (a pace slower
    than the probe's would otherwise drop a whole epoch's time). Its ``total_steps`` is where the
    lr decay and the run end; ``epochs == epochs_done``: stop now.

    Example: 4 epochs of 10 steps were planned; the first took 21 s, 79 s are left.
        >>> plan = BudgetPlan(budget_s=110, startup_s=0, reserve_s=10, export_s=5, step_s=1.0, eval_s=2.0,
        ...                   epochs=4, steps_per_epoch=10, warmup_steps=0)
        >>> new = replan_budget(plan, epochs_done=1, epoch_s=21.0, left_s=79.0, max_epochs=6)
        >>> new.epochs, new.total_steps  # 3 more whole epochs (63 s), then 6 steps and a validation
        (5, 46)
    """
    steps = plan.steps_per_epoch
    room = max(0, max_epochs - epochs_done)
    whole = max(0, min(int(left_s // epoch_s), room))
    extra = int((left_s - whole * epoch_s - plan.eval_s) // (epoch_s / steps))
    if whole == room or extra < PARTIAL_EPOCH * steps:
        extra = 0
    epochs = epochs_done + whole
    return dataclasses.replace(plan, epochs=epochs + (extra > 0), last_step=epochs * steps + extra if extra else 0)


def out_of_time(left_s: float, eval_s: float, step_s: float) -> bool:
    """Whether a budgeted run must stop after this step: the ``left_s`` seconds before the
    export's reserve no longer hold another ``step_s`` step and the ``eval_s`` validation that
    closes the epoch. The re-plan after each epoch sets the end from the pace of whole epochs;
    this catches a pace that slows inside the last one (a 5-minute plan has one re-plan point).

    Example: 14 s left, a 12 s validation, 1.5 s steps: one more step fits; with 13 s left it does not.
        >>> out_of_time(14.0, 12.0, 1.5), out_of_time(13.0, 12.0, 1.5)
        (False, True)
    """
    return left_s < eval_s + step_s


def run_probe(opts: TrainOptions, model: Any, train_ds: Any, val_ds: Any, val_batches: int) -> Probe:
    """Time ``PROBE_STEPS`` training steps of ``model`` (compiled) on ``train_ds`` and two
    validation batches of ``val_ds``; the model is thrown away afterwards."""
    times = []
    iterator = iter(train_ds)
    for _ in range(PROBE_STEPS):
        start = time.perf_counter()
        try:
            x, y = next(iterator)
        except StopIteration:
            break
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    if len(times) < 2:
        raise TrainError(f"{opts.prepared}: too few training batches to measure a step")
    evals = []
    for x, y in val_ds.take(2):
        start = time.perf_counter()
        model.test_on_batch(x, y)
        evals.append(time.perf_counter() - start)
    eval_batch = evals[-1] if evals else 0.0
    return Probe(step_s=statistics.median(times[1:]), first_step_s=times[0], eval_batch_s=eval_batch,
                 eval_first_s=evals[0] if evals else 0.0, val_batches=val_batches)  # fmt: skip


class Deadline:
    """The wall-clock end of a budgeted command (``time.monotonic()`` seconds)."""

    def __init__(self, started: float, budget_s: float, reserve_s: float) -> None:
        self.end = started + budget_s
        self.reserve_s = reserve_s

    def left(self) -> float:
        return self.end - time.monotonic()


def deadline_guard(deadline: Deadline, run: Any, plan: BudgetPlan, replan: bool) -> Any:
    """A Keras callback run after each epoch, before its checkpoint. ``replan``: move the end of
    the lr decay to the last epoch that still ends in time at the pace measured so far (after the
    first step, which carries the tracing), and stop there; a probe is a few steps and a
    shared machine's pace drifts. Otherwise (a resumed run, which finishes its recorded plan)
    only stop when another epoch would eat into the export's time. The plan in force goes to
    ``run.extra_state["budget_plan"]``, so the checkpoint and state.json record it."""
    import keras

    from segops.training.schedule import WarmupPolyDecay

    class BudgetGuard(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.planned, self.epoch = plan.epochs, 0
            self.began = None
            self.stop_at: int | None = plan.last_step or None  # the step a shortened last epoch ends at

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch, self.epoch_began, self.epoch_steps = epoch, time.monotonic(), 0

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            now = time.monotonic()
            if self.began is None:  # the run's first step carries the tracing: paces start after it
                self.began, self.steps_done = now, 0
                self.epoch_began, self.epoch_steps = now, 0
            else:
                self.steps_done += 1
                self.epoch_steps += 1
            step = int(self.model.optimizer.iterations.numpy())
            if self.stop_at is not None and step >= self.stop_at:
                self.model.stop_training = True  # Keras still validates and checkpoints this epoch
                return
            end = self.stop_at or self.planned * plan.steps_per_epoch
            pace = (now - self.epoch_began) / self.epoch_steps if self.epoch_steps else plan.step_s
            if step < end and out_of_time(deadline.left() - deadline.reserve_s, plan.eval_s, pace):
                log.warning("time budget: %.0f s left, the steps take %.2f s now: stopping at step %d of %d, "
                            "in epoch %d", deadline.left(), pace, step, end, self.epoch + 1)  # fmt: skip
                self.stop_at, self.planned = step, self.epoch + 1
                in_force = BudgetPlan.from_json(run.extra_state["budget_plan"]) if "budget_plan" in run.extra_state else plan
                run.extra_state["budget_plan"] = dataclasses.replace(in_force, epochs=self.planned, last_step=step).to_json()
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            done, steps = epoch + 1, plan.steps_per_epoch  # what fit was given (BudgetPlan.apply)
            # Seconds per epoch, validation included, from every step after the very first.
            per_epoch = (time.monotonic() - self.began) * steps / max(self.steps_done, 1)
            left = deadline.left() - deadline.reserve_s
            at_end = self.stop_at is not None and int(self.model.optimizer.iterations.numpy()) >= self.stop_at
            # Re-planned after every epoch, a shortened last epoch already planned included: the
            # pace can still slow down after it was planned (docs/benchmarks.md, "Measurements
            # formerly in docstrings").
            if replan and not at_end:
                new = replan_budget(plan, done, per_epoch, left, self.params.get("epochs", done))
                schedule = getattr(self.model.optimizer, "_learning_rate", None)
                if (new.epochs, new.total_steps) != (self.planned, self.planned * steps) and isinstance(
                    schedule, WarmupPolyDecay
                ):
                    schedule.set_total_steps(new.total_steps)
                    log.info("time budget: %.0f s per epoch, %.0f s left: the run ends at step %d, epoch %d (was %d)",
                             per_epoch, left, new.total_steps, new.epochs, self.planned)  # fmt: skip
                self.planned = new.epochs
                self.stop_at = new.last_step or None
                run.extra_state["budget_plan"] = new.to_json()
            elif not replan and left < per_epoch and done < self.planned:
                log.warning("time budget: %.0f s left, an epoch takes %.0f s: stopping after epoch %d",
                            deadline.left(), per_epoch, done)  # fmt: skip
                self.planned = done
                run.stopped_early = True
            if done >= self.planned and done < self.params.get("epochs", 0):
                run.budget_ended = True
                self.model.stop_training = True

    return BudgetGuard()


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock (Linux: from /proc, so the
    interpreter's and the imports' start-up count against the budget; elsewhere: now)."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        import os

        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0 <= age < 86400 else now
