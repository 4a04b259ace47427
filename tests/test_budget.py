"""`segops train --time-budget`: the plan's and the re-plan's arithmetic (plain functions), the
callback that re-plans on a fake clock, the warm-up + poly schedule, and a budgeted run end to end
(plan printed, followed, recorded, kept on --resume)."""

import json
import time

import keras
import numpy as np
import pytest
from trainutil import write_prepared

from segops.training.budget import PARTIAL_EPOCH, BudgetPlan, Probe, plan_budget, replan_budget
from segops.training.loop import train
from segops.training.options import TrainError, TrainOptions
from segops.training.schedule import WARMUP_START, WarmupPolyDecay

PROBE = Probe(step_s=1.0, first_step_s=11.0, eval_batch_s=0.5, eval_first_s=3.0, val_batches=10)


def test_plan_fills_the_budget_without_passing_it():
    plan = plan_budget(budget_s=600.0, elapsed_s=60.0, probe=PROBE, warmup=0.05)
    spent = 60.0 + plan.reserve_s + plan.total_steps * PROBE.step_s + plan.epochs * plan.eval_s
    assert spent <= 600.0
    assert spent + plan.steps_per_epoch * PROBE.step_s > 600.0 - plan.epochs  # no epoch's worth left unused
    # Validation takes at most its share of the training time, at least one pass.
    assert 2 <= plan.epochs and plan.epochs * plan.eval_s <= max(0.08 * (600 - 60 - plan.reserve_s), 2 * plan.eval_s)
    assert plan.warmup_steps == round(0.05 * plan.total_steps)
    assert BudgetPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    no_export = plan_budget(budget_s=600.0, elapsed_s=60.0, probe=PROBE, warmup=0.05, export=False)
    assert no_export.export_s == 0 and no_export.reserve_s == plan.reserve_s - plan.export_s  # --no-export keeps none


def test_a_budget_smaller_than_start_up_is_refused_with_the_numbers():
    with pytest.raises(TrainError, match="leaves no time to train"):
        plan_budget(budget_s=60.0, elapsed_s=50.0, probe=PROBE, warmup=0.0)


# 4 epochs of 10 steps at 1 s in a 110 s budget, 10 s of it reserved; a validation takes 2 s
PLAN = BudgetPlan(budget_s=110, startup_s=0, reserve_s=10, export_s=5, step_s=1.0, eval_s=2.0, epochs=4,
                  steps_per_epoch=10, warmup_steps=0)  # fmt: skip


def test_a_slower_pace_shortens_the_last_epoch_instead_of_dropping_it():
    """The first epoch took 21.1 s (2.1 s a step, its validation included) and 79 s are left: 3
    whole epochs (63 s), then, in the 16 s after them, a validation (2 s) and 6 steps."""
    new = replan_budget(PLAN, epochs_done=1, epoch_s=190 / 9, left_s=79.0, max_epochs=6)
    assert (new.epochs, new.last_step, new.total_steps) == (5, 46, 46)
    assert (new.steps_per_epoch, new.budget_s, new.eval_s) == (10, 110, 2.0)  # the rest of the plan as it was


def test_a_pace_that_slows_again_leaves_too_little_for_a_shortened_epoch():
    """After 2 epochs at an average 31.6 s, 38 s are left: one whole epoch, then 4.4 s, which hold
    the validation and one step: less than PARTIAL_EPOCH of an epoch, so the run ends after epoch 3."""
    new = replan_budget(PLAN, epochs_done=2, epoch_s=31.6, left_s=38.0, max_epochs=6)
    assert 1 < PARTIAL_EPOCH * PLAN.steps_per_epoch
    assert (new.epochs, new.last_step, new.total_steps) == (3, 0, 30)


def test_a_faster_pace_lengthens_the_run_to_the_epochs_allowed_and_no_further():
    new = replan_budget(PLAN, epochs_done=1, epoch_s=6.0, left_s=90.0, max_epochs=6)  # 15 epochs would fit
    assert (new.epochs, new.last_step, new.total_steps) == (6, 0, 60)  # no shortened 7th epoch either


@pytest.mark.parametrize("left_s", [6.0, 0.0, -5.0])  # 6 s: a validation and 2 steps, under PARTIAL_EPOCH
def test_no_time_for_another_epoch_or_a_useful_part_of_one_stops_now(left_s):
    new = replan_budget(PLAN, epochs_done=2, epoch_s=20.0, left_s=left_s, max_epochs=6)
    assert (new.epochs, new.last_step, new.total_steps) == (2, 0, 20)


def test_warmup_poly_schedule_values():
    schedule = WarmupPolyDecay(0.01, total_steps=100, warmup_steps=10, power=0.9)
    lr = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 5, 10, 55, 100, 150)]
    expected = [0.01 * WARMUP_START, 0.01 * (WARMUP_START + (1 - WARMUP_START) * 0.5), 0.01,
                0.01 * 0.5**0.9, 0.0, 0.0]  # fmt: skip
    np.testing.assert_allclose(lr, expected, rtol=1e-5, atol=1e-9)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    write_prepared(str(root), {"train": 8, "val": 4}, height=16, width=32)
    return str(root)


TINY = {"model": "unet", "depth": 2, "base_filters": 4, "batch_size": 4, "crop": (16, 32), "verbose": 0,
        "warmup": 0.1}  # fmt: skip


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


def test_budgeted_run_follows_records_and_resumes_its_plan(prepared, tmp_path):
    plans = []
    opts = TrainOptions.from_flat(prepared=prepared, out=str(tmp_path / "run"), time_budget=0.8, export=False, **TINY)
    with pytest.raises(KeyboardInterrupt):
        train(opts, extra_callbacks=[_Interrupt()], started=time.monotonic(), on_plan=plans.append)
    assert len(plans) == 1 and plans[0].startswith("budget 0.8 min: ~")
    state = json.loads((tmp_path / "run/checkpoints/state.json").read_text())
    plan = BudgetPlan.from_json(state["budget_plan"])
    assert state["options"]["time_budget"] == 0.8 and state["options"]["epochs"] == 20  # as given
    assert plan.total_steps >= plan.epochs >= 1  # re-planned after epoch 1 at the pace it measured
    # --resume takes the recorded plan (no new probe: the line of the plan as last re-planned)
    # and trains it to the end.
    resumed = train(TrainOptions.from_flat(prepared=prepared, out=str(tmp_path / "run"), time_budget=0.8,
                                           export=False, resume=True, **TINY), on_plan=plans.append)  # fmt: skip
    assert plans[1] == plan.describe() and plans[1].startswith("budget 0.8 min: ~")
    assert resumed.epochs_trained == plan.epochs
    model = keras.saving.load_model(str(tmp_path / f"run/checkpoints/epoch-{plan.epochs:04d}.keras"))
    assert int(model.optimizer.iterations.numpy()) == plan.total_steps
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.0, abs=1e-9)


def test_auto_crop_is_the_image_size_capped_and_rounded_to_the_stride():
    from segops.training.options import auto_crop

    assert auto_crop((360, 480), 8) == (360, 480)  # CamVid, Fast-SCNN
    assert auto_crop((360, 480), 16) == (352, 480)
    assert auto_crop((1024, 2048), 32) == (512, 1024)  # Cityscapes: capped
    assert auto_crop((20, 20), 32) == (32, 32)  # never below one stride (padded with ignore)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guard(monkeypatch, max_epochs: int):
    """A fake clock at 0 and the guard of PLAN (4 epochs of 10 steps at 1 s in a 110 s budget,
    10 s reserved), fit allowing ``max_epochs``, on a tiny compiled model."""
    import segops.training.budget as budget

    clock = _Clock()
    monkeypatch.setattr(budget.time, "monotonic", clock)
    run = type("Run", (), {"extra_state": {}, "stopped_early": False, "budget_ended": False})()
    schedule = WarmupPolyDecay(1e-3, PLAN.total_steps)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    model.optimizer.build(model.trainable_variables)
    guard = budget.deadline_guard(budget.Deadline(0.0, PLAN.budget_s, PLAN.reserve_s), run, PLAN, replan=True)
    guard.set_model(model)
    guard.set_params({"epochs": max_epochs, "steps": 10})
    guard.on_train_begin()
    return clock, run, schedule, model, guard


def _epoch(clock, model, guard, epoch: int, step_s: float, eval_s: float = 2.0) -> None:
    """Epoch ``epoch`` (0-based) of 10 steps at ``step_s`` s each, then its validation."""
    guard.on_epoch_begin(epoch)
    for batch in range(10):
        clock.now += step_s
        model.optimizer.iterations.assign(epoch * 10 + batch + 1)
        guard.on_train_batch_end(batch)
    clock.now += eval_s
    guard.on_epoch_end(epoch)


def _guard_after_a_slow_first_epoch(monkeypatch):
    """A fake clock and the guard of PLAN, after its first epoch ran at 2 s per step (ending at
    21 s, its validation included)."""
    clock, run, schedule, model, guard = _guard(monkeypatch, max_epochs=6)
    _epoch(clock, model, guard, 0, step_s=2.0, eval_s=1.0)
    return clock, PLAN, run, schedule, model, guard


def test_the_guard_moves_the_end_of_the_lr_decay_and_stops_at_the_replanned_step(monkeypatch):
    """Fake clock: the numbers of the first re-plan test above, measured by the callback: the lr
    decay ends at step 46, the plan in force is recorded, and training stops there."""
    clock, plan, run, schedule, model, guard = _guard_after_a_slow_first_epoch(monkeypatch)
    assert schedule.total_steps == 46
    assert run.extra_state["budget_plan"]["epochs"] == 5 and run.extra_state["budget_plan"]["last_step"] == 46
    recorded = BudgetPlan.from_json(run.extra_state["budget_plan"])
    assert recorded.total_steps == 46  # what --resume trains to
    model.optimizer.iterations.assign(45)
    guard.on_train_batch_end(4)
    assert not model.stop_training
    model.optimizer.iterations.assign(46)
    guard.on_train_batch_end(5)
    assert model.stop_training
    older = {k: v for k, v in plan.to_json().items() if k != "last_step"}  # a state.json of before
    assert BudgetPlan.from_json(older).total_steps == 40


def test_a_pace_that_slows_after_the_plan_moves_the_end_again(monkeypatch):
    """Fake clock: a shortened last epoch is already planned (step 46) when the second epoch runs at
    4 s per step; the guard re-plans anyway (the numbers of the second re-plan test above): the run
    now ends at step 30, after epoch 3, and no longer stops in the middle of an epoch."""
    clock, plan, run, schedule, model, guard = _guard_after_a_slow_first_epoch(monkeypatch)
    assert schedule.total_steps == 46
    for step in range(10):
        clock.now = 21.0 + 4.0 * (step + 1)
        model.optimizer.iterations.assign(11 + step)
        guard.on_train_batch_end(step)
    clock.now = 62.0
    guard.on_epoch_end(1)
    assert schedule.total_steps == 30 and run.extra_state["budget_plan"]["epochs"] == 3
    assert run.extra_state["budget_plan"]["last_step"] == 0 and not model.stop_training


def test_a_pace_that_slows_inside_the_last_epoch_stops_it_in_time(monkeypatch):
    """Fake clock: three epochs as planned (1 s steps, 2 s validations: 36 s), then the last one
    runs at 8 s per step. Its ten steps would end at 118 s, past the 100 s before the reserve; the
    guard stops after step 37 (92 s: 8 s left, less than a step and the validation), and records
    the plan that ended there."""
    clock, run, schedule, model, guard = _guard(monkeypatch, max_epochs=4)
    for epoch in range(3):
        _epoch(clock, model, guard, epoch, step_s=1.0)
    assert clock.now == 36.0 and not model.stop_training
    guard.on_epoch_begin(3)
    for batch in range(10):
        clock.now += 8.0
        model.optimizer.iterations.assign(31 + batch)
        guard.on_train_batch_end(batch)
        if model.stop_training:
            break
    assert model.optimizer.iterations.numpy() == 37 and clock.now == 92.0
    assert clock.now + PLAN.eval_s <= PLAN.budget_s - PLAN.reserve_s
    recorded = BudgetPlan.from_json(run.extra_state["budget_plan"])
    assert (recorded.epochs, recorded.last_step, recorded.total_steps) == (4, 37, 37)  # what --resume keeps


def test_a_run_on_its_planned_pace_is_not_stopped_inside_an_epoch(monkeypatch):
    """Fake clock: the four planned epochs at the planned pace run to their last step (40)."""
    clock, run, schedule, model, guard = _guard(monkeypatch, max_epochs=4)
    for epoch in range(4):
        _epoch(clock, model, guard, epoch, step_s=1.0)
        assert not model.stop_training or epoch == 3
    assert model.optimizer.iterations.numpy() == 40 and clock.now == 48.0
