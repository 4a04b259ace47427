"""The training loop around ``keras.Model.fit``: checkpoints, exact resume, export.

``train(TrainOptions(...))`` reads a ``segops prepare`` directory and writes (see
docs/architecture.md):

    OUT/checkpoints/epoch-NNNN.keras   model + optimizer after epoch NNNN (the last and the best kept)
    OUT/checkpoints/state.json         epoch, seed, options, history, best epoch: the commit point
    OUT/history.json, OUT/history.csv  one row per epoch
    OUT/logs/                          TensorBoard
    OUT/final/, OUT/best/              export directories (segops.models.export_dir), OUT/model.json

Resume is exact: the checkpoint holds weights and optimizer state (iterations, so also the poly
learning-rate position), state.json the epoch counter and history (segops.training.state), and
the input pipeline's data order is a function of (seed, epoch) only; so epochs 1..k + resume
k+1..n produce the weights of an uninterrupted run.

``--freeze-backbone-epochs N`` trains in two phases: the pretrained encoder is frozen for epochs
1..N (the checkpoints hold it frozen, with an optimizer over the other weights), then unfrozen
with a fresh optimizer whose iteration count continues (the poly schedule does not restart);
both an uninterrupted run and a resume at any epoch go through the same two states.

:func:`train` reads as its steps: check the input, plan the run (workers, steps, state), build or
load the model, fit, then summarise and export.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from segops.core import labels, layout
from segops.training.budget import (
    PROBE_STEPS,
    BudgetPlan,
    Deadline,
    deadline_guard,
    plan_budget,
    process_started,
    run_probe,
)
from segops.training.callbacks import make_callbacks
from segops.training.devices import dtype_policy, resolve_precision, select_strategy, worker_info
from segops.training.options import POLY_POWER, SGD_MOMENTUM, TrainError, TrainOptions
from segops.training.prepared import (
    PreparedData,
    check_prepared,
    first_image_size,
    read_json,
    resolve_class_weights,
)
from segops.training.run_export import best_row, export_run
from segops.training.run_plan import Plan, TrainResult
from segops.training.state import RunState, check_resume, class_key, state_path

log = logging.getLogger(__name__)


# --- compiling -----------------------------------------------------------------------------------


def make_optimizer(opts: TrainOptions, steps: int, total_steps: int | None = None) -> Any:
    """Adam or momentum SGD, with the poly schedule over all ``epochs * steps`` steps or a constant lr."""
    import keras

    from segops.training.schedule import WarmupPolyDecay

    optim = opts.optim
    lr: Any = optim.lr
    total = max(total_steps or optim.epochs * steps, 1)
    if optim.lr_schedule == "poly" and (optim.warmup > 0 or optim.time_budget):  # a budget adjusts its total
        lr = WarmupPolyDecay(optim.lr, total, warmup_steps=round(optim.warmup * total), power=POLY_POWER)
    elif optim.lr_schedule == "poly":
        lr = keras.optimizers.schedules.PolynomialDecay(optim.lr, decay_steps=total, end_learning_rate=0.0,
                                                        power=POLY_POWER)  # fmt: skip
    if optim.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.SGD(learning_rate=lr, momentum=SGD_MOMENTUM)


def compile_model(model: Any, opts: TrainOptions, class_weights: list[float] | None, steps: int,
                  total_steps: int | None = None) -> None:  # fmt: skip
    """Compile ``model`` as training does: optimizer, segmentation loss, streaming mIoU and Dice."""
    from segops.training.losses import SegmentationLoss
    from segops.training.metrics import MeanDice, MeanIoU

    optim = opts.optim
    num_classes = int(model.outputs[0].shape[-1])  # the label set's, which the model was built for
    loss = SegmentationLoss(optim.loss, class_weights=class_weights, use_pixel_weights=opts.data.weight_maps,
                            num_classes=num_classes, **optim.loss_hparams)  # fmt: skip
    model.compile(
        optimizer=make_optimizer(opts, steps, total_steps), loss=loss,
        metrics=[MeanIoU(num_classes), MeanDice(num_classes)],
        jit_compile="auto" if opts.xla is None else opts.xla,
        run_eagerly=opts.eager,
    )


# --- the steps of a run --------------------------------------------------------------------------


def plan_run(opts: TrainOptions, data: PreparedData, scheme: str, class_weights: list[float] | None,
             recorded: TrainOptions | None = None) -> Plan:  # fmt: skip
    """This worker's output directory and shards, the steps per epoch and the saved state to
    resume from. ``recorded``: the options as the user gave them, when ``opts`` holds a time
    budget's plan (they are what state.json records and --resume compares). Raises TrainError
    for a run that cannot start."""
    from segops.training import input_pipeline as ip

    index, num_workers, is_chief = worker_info()
    out = opts.out if is_chief else os.path.join(opts.out, layout.worker_dir(index))
    check_resume(recorded or opts, out)
    os.makedirs(out, exist_ok=True)

    precision = resolve_precision(opts.precision)
    mix = opts.annotations
    if num_workers > 1:
        # Each worker trains on its own shards (of each kind read). Validation is not split: every
        # worker evaluates all of it, which multiplies the summed confusion matrix by the worker
        # count and leaves IoU/Dice (ratios) unchanged.
        for kind, files, used in (("training", data.train_files, mix.uses_fine),
                                  ("coarse", data.coarse_files, mix.uses_coarse)):  # fmt: skip
            if used and len(files) < num_workers:
                raise TrainError(f"{len(files)} {kind} shards for {num_workers} workers: prepare more shards")
        data = dataclasses.replace(data, train_files=data.train_files[index::num_workers],
                                   coarse_files=data.coarse_files[index::num_workers])  # fmt: skip
    corrupt = ip.CorruptRecords()
    train_records = worker_records(data.train_files, data.train_records, num_workers, corrupt)
    coarse_records = worker_records(data.coarse_files, data.coarse_records, num_workers, corrupt)
    if (mix.uses_fine and train_records == 0) or (mix.uses_coarse and coarse_records == 0):
        raise TrainError(f"{opts.prepared}: no readable training records")
    steps = opts.optim.steps_per_epoch or (
        mix.default_steps(train_records * num_workers, coarse_records * num_workers, opts.data.batch_size)
        if mix.uses_coarse else max(train_records * num_workers // opts.data.batch_size, 1)
    )  # fmt: skip

    run = RunState(opts, out, is_chief, corrupt, recorded=recorded)
    run.extra_state = {"precision": precision, "class_weight_scheme": scheme}
    state = run.load_state() if opts.resume else None
    return Plan(out, data, train_records, coarse_records, steps, precision, scheme, class_weights, run, state)


def worker_records(files: list[str], recorded: int | None, num_workers: int, corrupt: Any) -> int:
    """Records this worker reads from ``files``: prepare's count split evenly, else counted."""
    from segops.training import input_pipeline as ip

    if not files:
        return 0
    if recorded is None:
        return ip.count_records(files, corrupt)
    return math.ceil(recorded / num_workers)


def load_or_build_model(opts: TrainOptions, plan: Plan) -> Any:
    """The checkpoint the saved state names, or a new compiled model (inside the dtype policy
    and strategy scope)."""
    import keras

    if plan.state:
        model = keras.saving.load_model(os.path.join(plan.run.ckpt_dir, plan.state["checkpoint"]), safe_mode=True)
        if opts.xla is not None and opts.xla != bool(model.jit_compile):
            model.jit_compile = opts.xla
        # A checkpoint of epoch e <= N was saved frozen (with an optimizer over the other weights).
        set_encoder_trainable(model, plan.initial_epoch > opts.model.freeze_backbone_epochs,
                              opts.model.freeze_encoder_bn)
        return model
    model = opts.model.build(num_classes=plan.data.label_set.num_classes)
    set_encoder_trainable(model, opts.model.freeze_backbone_epochs == 0, opts.model.freeze_encoder_bn)
    compile_model(model, opts, plan.class_weights, plan.steps, plan.lr_total_steps)
    return model


def set_encoder_trainable(model: Any, trainable: bool, freeze_bn: bool = False) -> None:
    """Make the pretrained encoder trainable or not; ``freeze_bn``: its BatchNorm layers stay
    frozen either way (Keras runs a BatchNorm layer with ``trainable=False`` in inference mode)."""
    import keras

    from segops.models import encoder_layers

    for layer in encoder_layers(model):
        layer.trainable = trainable  # recursive: this also unfreezes its BatchNorm layers
        if freeze_bn:
            for inner in (layer, *getattr(layer, "layers", ())):  # the backbone's are one functional level
                if isinstance(inner, keras.layers.BatchNormalization):
                    inner.trainable = False


def unfreeze_encoder(model: Any, opts: TrainOptions, plan: Plan) -> None:
    """End of the frozen phase: encoder trainable, recompiled with a fresh optimizer (the frozen
    one has no slots for the encoder) that continues the iteration count (so the lr schedule)."""
    import keras

    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    set_encoder_trainable(model, True, opts.model.freeze_encoder_bn)
    compile_model(model, opts, plan.class_weights, plan.steps, plan.lr_total_steps)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(iterations)


def budget_plan(opts: TrainOptions, data: PreparedData, class_weights: list[float] | None, strategy: Any,
                started: float) -> BudgetPlan:  # fmt: skip
    """The plan of a ``--time-budget`` run: the interrupted run's on ``--resume``, else measured
    by a probe (:mod:`segops.training.budget`) on a throw-away copy of the model."""
    import keras

    from segops.training import input_pipeline as ip

    path = state_path(opts.out)
    if opts.resume and os.path.exists(path):
        saved = read_json(path, "checkpoint state").get("budget_plan")
        if saved:
            return BudgetPlan.from_json(saved)
    probe_opts = dataclasses.replace(opts, optim=dataclasses.replace(opts.optim, epochs=1, steps_per_epoch=PROBE_STEPS))
    corrupt = ip.CorruptRecords()
    records = worker_records(data.train_files, data.train_records, 1, corrupt)
    val_batches = math.ceil(ip.count_records(data.val_files, corrupt) / opts.data.for_validation().batch_size)
    keras.utils.set_random_seed(opts.seed)
    with dtype_policy(resolve_precision(opts.precision)), strategy.scope():
        model = opts.model.build(num_classes=data.label_set.num_classes)
        set_encoder_trainable(model, True, opts.model.freeze_encoder_bn)  # the probe times the unfrozen step
        compile_model(model, probe_opts, class_weights, PROBE_STEPS)
        train_ds = ip.train_dataset(data.train_files, opts.augment, opts.data, seed=opts.seed,
                                    steps_per_epoch=PROBE_STEPS, initial_epoch=0, epochs=1, num_records=records,
                                    corrupt=corrupt)  # fmt: skip
        val_ds = ip.eval_dataset(data.val_files, opts.data.for_validation(), size=opts.data.val_size,
                                 stride=opts.model.stride, corrupt=corrupt)  # fmt: skip
        probe = run_probe(opts, model, train_ds, val_ds, val_batches)
    del model
    keras.backend.clear_session()
    return plan_budget(opts.optim.time_budget * 60.0, time.monotonic() - started, probe, opts.optim.warmup, opts.export)


def fit(model: Any, opts: TrainOptions, plan: Plan, extra_callbacks: list[Any]) -> None:
    """``model.fit`` over epochs ``initial_epoch .. epochs-1``, validating after each; in two
    phases (frozen, then trainable encoder) when ``--freeze-backbone-epochs`` says so."""
    freeze, epochs = opts.model.freeze_backbone_epochs, opts.optim.epochs
    start = plan.initial_epoch
    if freeze and start <= freeze < epochs:  # this process reaches the end of the frozen phase
        if start < freeze:
            fit_epochs(model, opts, plan, extra_callbacks, start, freeze)
            if plan.run.stopped_early or not plan.run.history or plan.run.history[-1]["epoch"] < freeze:
                return
        unfreeze_encoder(model, opts, plan)
        start = freeze
    if start < epochs:
        fit_epochs(model, opts, plan, extra_callbacks, start, epochs)


def fit_epochs(model: Any, opts: TrainOptions, plan: Plan, extra_callbacks: list[Any], first: int, end: int) -> None:
    """``model.fit`` over epochs ``first .. end-1`` (0-based)."""
    from segops.training import input_pipeline as ip

    corrupt = plan.run.corrupt
    train_ds = ip.train_dataset(
        plan.data.train_files,
        opts.augment,
        opts.data,
        seed=opts.seed,
        steps_per_epoch=plan.steps,
        initial_epoch=first,
        epochs=end,
        num_records=plan.train_records,
        corrupt=corrupt,
        coarse_files=plan.data.coarse_files,
        coarse_records=plan.coarse_records,
        mix=opts.annotations,
    )
    val_ds = ip.eval_dataset(
        plan.data.val_files, opts.data.for_validation(), size=opts.data.val_size, stride=opts.model.stride,
        corrupt=corrupt,
    )  # fmt: skip
    with warnings.catch_warnings():
        # Keras says "ran out of data" at the end of every validation pass of a dataset of
        # unknown length; a short *training* input is detected below instead.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=end,
            initial_epoch=first,
            steps_per_epoch=plan.steps,
            callbacks=plan.first_callbacks + make_callbacks(plan.run, plan.data.label_set.class_names) + extra_callbacks,
            verbose=opts.verbose,
            shuffle=False,
        )
    run = plan.run
    trained = run.history[-1]["epoch"] if run.history else first
    if trained < end and not run.stopped_early and not run.budget_ended:
        log.warning("training input ran out after epoch %d of %d (corrupt records?)", trained, opts.optim.epochs)


def train(opts: TrainOptions, extra_callbacks: list[Any] | None = None, started: float | None = None,
          on_plan: Callable[[str], None] | None = None) -> TrainResult:  # fmt: skip
    """Train, checkpoint every epoch, export best and final. Raises :class:`TrainError` for bad
    input or options before anything is trained (options are checked when ``opts`` is made).
    ``extra_callbacks`` run after the built-in ones (so after each epoch's checkpoint is written).
    With ``--time-budget``, ``started`` is when the budget began (``time.monotonic()``; default:
    this process's start) and ``on_plan`` receives the plan's one-line description.
    The example trains on a ``segops prepare`` directory ``data/prepared`` (so the tests do not run it).

    Example:
        >>> import os  # doctest: +SKIP
        >>> from segops.training.loop import train  # doctest: +SKIP
        >>> from segops.training.options import TrainOptions  # doctest: +SKIP
        >>> opts = TrainOptions.from_flat(prepared="data/prepared", out="runs/unet", model="unet",
        ...                               depth=3, base_filters=16, epochs=2)  # doctest: +SKIP
        >>> result = train(opts)  # doctest: +SKIP
        >>> result.epochs_trained, result.out  # doctest: +SKIP
        (2, 'runs/unet')
        >>> sorted(os.listdir("runs/unet"))  # doctest: +SKIP
        ['best', 'checkpoints', 'final', 'history.csv', 'history.json', 'logs', 'model.json']
    """
    started = process_started() if started is None else started
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    strategy = select_strategy()
    data = check_prepared(opts)
    scheme, class_weights = resolve_class_weights(opts, data)
    recorded, budget = opts, None
    if opts.augment.crop is None:  # --crop auto: from the prepared images (recorded as given)
        size = first_image_size(data.train_files or data.coarse_files)
        if size is None:
            raise TrainError(f"{opts.prepared}: no readable training record to take the crop size from")
        opts = dataclasses.replace(opts, augment=opts.augment.resolved(size, opts.model.stride))
    if opts.optim.time_budget:
        check_resume(opts, opts.out)  # before the probe: a refused run costs nothing
        budget = budget_plan(opts, data, class_weights, strategy, started)
        (on_plan or log.warning)(budget.describe())
        opts = budget.apply(opts, room=not (opts.resume and os.path.exists(state_path(opts.out))))
    plan = plan_run(opts, data, scheme, class_weights, recorded=recorded)
    if budget is not None:
        plan.run.extra_state["budget_plan"] = budget.to_json()
        plan.lr_total_steps = budget.total_steps
        # A resumed run finishes the recorded plan; a new one re-plans after every epoch.
        deadline = Deadline(started if not plan.state else time.monotonic(), budget.budget_s, budget.export_s)
        plan.first_callbacks.append(deadline_guard(deadline, plan.run, budget, replan=not plan.state))

    import keras

    from segops.models import layers  # noqa: F401  (registers the model zoo's layers for load_model)
    from segops.training import metrics  # noqa: F401  (registers their classes for load_model)
    from segops.training.losses import total  # noqa: F401

    keras.utils.set_random_seed(opts.seed)
    with dtype_policy(plan.precision), strategy.scope():
        model = load_or_build_model(opts, plan)
        if plan.state and plan.state.get("stopped_early"):
            plan.run.stopped_early = True
        elif plan.initial_epoch < opts.optim.epochs:
            fit(model, opts, plan, list(extra_callbacks or []))
    if plan.run.corrupt.count:
        log.warning("%d corrupt records were skipped (see warnings above)", plan.run.corrupt.count)
    if not plan.run.history:
        raise TrainError("no epoch was trained")
    result = summarise(opts, plan.run, plan.data.label_set.class_names)
    if plan.run.is_chief and opts.export:
        export_run(opts, plan, model, result)
    return result


# --- summary and export --------------------------------------------------------------------------


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def summarise(opts: TrainOptions, run: RunState, class_names: tuple[str, ...] = labels.CLASS_NAMES) -> TrainResult:
    best = best_row(run)
    return TrainResult(
        out=opts.out,
        epochs_trained=run.history[-1]["epoch"],
        best_epoch=best["epoch"],
        best_val_mean_iou=_nan_if_none(best.get("val_mean_iou")),
        best_val_iou_per_class={name: best.get("val_" + class_key(name)) for name in class_names},
        final_val_mean_iou=_nan_if_none(run.history[-1].get("val_mean_iou")),
        corrupt_records=run.corrupt.count,
        history=run.history,
        stopped_early=run.stopped_early,
    )
