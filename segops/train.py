"""The training loop around ``keras.Model.fit``: checkpoints, exact resume, export.

``train(TrainOptions(...))`` reads a ``segops prepare`` directory and writes (see
docs/architecture.md):

    OUT/checkpoints/epoch-NNNN.keras   model + optimizer after epoch NNNN (the last and the best kept)
    OUT/checkpoints/state.json         epoch, seed, options, history, best epoch: the commit point
    OUT/history.json, OUT/history.csv  one row per epoch
    OUT/logs/                          TensorBoard
    OUT/final/, OUT/best/              export directories (segops.export), OUT/model.json

Resume is exact: the checkpoint holds weights and optimizer state (iterations, so also the poly
learning-rate position), state.json the epoch counter and history, and the input pipeline's data
order is a function of (seed, epoch) only; so epochs 1..k + resume k+1..n produce the weights of
an uninterrupted run. The state file is written after the checkpoint it names, so an
interruption at any point leaves a consistent pair.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from segops.core import labels, records

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
CLASS_WEIGHT_SCHEMES = ("median_frequency", "enet", "inverse_frequency")
STATE_FILE = "state.json"
CHECKPOINT_DIR = "checkpoints"
# Options that may differ on --resume without changing the result of the remaining epochs.
RESUME_FREE_OPTIONS = ("resume", "out", "prepared", "verbose", "early_stopping", "xla", "export", "data_threads")


class TrainError(ValueError):
    """A problem the user can fix (bad prepared dir, incompatible options); raised before training."""


@dataclass
class TrainOptions:
    prepared: str
    out: str
    model: str = "unet"
    epochs: int = 20
    batch_size: int = 8
    crop: tuple[int, int] = (256, 512)
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    lr_schedule: str = "poly"  # poly (power 0.9 to 0 over all steps) | constant
    loss: str = "ce"  # ce | dice | ce+dice
    class_weights: str = "none"  # none | default (class_weights.json's default_scheme) | a scheme name
    weight_maps: bool = False
    depth: int = 4  # U-Net
    base_filters: int = 32
    upsampling: str = "transpose"  # U-Net
    dilated: bool = False
    dropout: float = 0.0
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: bool = True
    precision: str = "auto"
    xla: bool = False
    resume: bool = False
    early_stopping: int | None = None  # patience in epochs on val mIoU
    seed: int = 0
    val_size: tuple[int, int] | None = None  # None: full prepared size
    val_batch_size: int | None = None
    steps_per_epoch: int | None = None  # None: train records // batch size
    train_split: str = "train"
    val_split: str = "val"
    shuffle_buffer: int = 64
    cycle_length: int = 4
    data_threads: int | None = None
    verbose: int = 1  # Keras progress bar (0 silent, 1 bar, 2 one line per epoch)
    export: bool = True  # write OUT/best, OUT/final, OUT/model.json at the end (off: checkpoints only)

    def hparams(self) -> dict[str, Any]:
        """Keyword hyper-parameters of the model builder."""
        common = {"base_filters": self.base_filters, "dropout": self.dropout, "dilated": self.dilated}
        if self.model == "unet":
            return {**common, "depth": self.depth, "upsampling": self.upsampling}
        return common

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


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


# --- small helpers -------------------------------------------------------------------------------


def _json_float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _write_json_atomic(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def class_key(name: str) -> str:
    return "iou_" + name.replace(" ", "_")


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainError(f"cannot read {what} {path}: {exc}") from exc


# --- checking the prepared directory -------------------------------------------------------------


@dataclass
class PreparedData:
    train_files: list[str]
    val_files: list[str]
    train_records: int | None
    has_weight_maps: bool | None
    class_weights: dict[str, Any] | None


def _manifest_count(manifest: dict[str, Any], stats: dict[str, Any], split: str) -> int | None:
    """Record count of ``split`` as recorded by prepare (manifest counts or stats.json)."""
    candidates = [manifest.get("splits", {}).get(split), stats.get("splits", {}).get(split)]
    for entry in candidates:
        if isinstance(entry, int):
            return entry
        if isinstance(entry, dict):
            for key in ("records", "written", "images", "ok"):
                if isinstance(entry.get(key), int):
                    return entry[key]
    return None


def _manifest_weight_maps(manifest: dict[str, Any]) -> bool | None:
    """Whether prepare wrote weight maps (manifest "weight_maps": {"enabled": ...}); None if unknown."""
    maps = manifest.get("weight_maps")
    if isinstance(maps, dict) and isinstance(maps.get("enabled"), bool):
        return maps["enabled"]
    option = manifest.get("options", {}).get("weight_maps")
    return option if isinstance(option, bool) else None


def check_prepared(opts: TrainOptions) -> PreparedData:
    """Everything that can fail about the input, checked before any model is built."""
    root = opts.prepared
    if not os.path.isdir(root):
        raise TrainError(f"prepared directory {root} does not exist: run `segops prepare` first")
    manifest_path = os.path.join(root, "manifest.json")
    if not os.path.exists(manifest_path):
        raise TrainError(f"{root} has no manifest.json: it is not (or not yet) a `segops prepare` output")
    manifest = _read_json(manifest_path, "manifest")
    version = manifest.get("schema_version")
    if version != records.SCHEMA_VERSION:
        raise TrainError(
            f"{root} was prepared with record schema version {version}; this segops reads version "
            f"{records.SCHEMA_VERSION}: run `segops prepare` again with this version"
        )
    stats_path = os.path.join(root, "stats.json")
    stats = _read_json(stats_path, "statistics") if os.path.exists(stats_path) else {}
    from segops.input_pipeline import shard_paths  # tf.io.gfile: lists without starting the runtime

    train_files = shard_paths(root, opts.train_split)
    val_files = shard_paths(root, opts.val_split)
    for split, files in ((opts.train_split, train_files), (opts.val_split, val_files)):
        if not files:
            raise TrainError(f"{root}/{split}/ holds no {split}-*-of-*.tfrecord shards: nothing to train on")
    train_records = _manifest_count(manifest, stats, opts.train_split)
    if train_records == 0:
        raise TrainError(f"{root}: the {opts.train_split} split has no records")

    has_maps = _manifest_weight_maps(manifest)
    if opts.weight_maps and has_maps is False:
        raise TrainError(
            f"--weight-maps asked for, but {root} was prepared without weight maps: prepare again "
            "with weight maps or pass --no-weight-maps"
        )
    class_weights = None
    cw_path = os.path.join(root, "class_weights.json")
    if os.path.exists(cw_path):
        class_weights = _read_json(cw_path, "class weights")
    if opts.class_weights not in ("none", "default", *CLASS_WEIGHT_SCHEMES):
        raise TrainError(f"unknown class-weight scheme {opts.class_weights!r}")
    if opts.class_weights != "none" and class_weights is None:
        raise TrainError(
            f"class weights {opts.class_weights!r} asked for, but {root} has no class_weights.json: "
            "run `segops prepare` again or pass --class-weights none"
        )
    return PreparedData(train_files, val_files, train_records, has_maps, class_weights)


def resolve_class_weights(opts: TrainOptions, data: PreparedData) -> tuple[str, list[float] | None]:
    """(scheme name, 19 weights or None); "default" is class_weights.json's default_scheme."""
    scheme = opts.class_weights
    if scheme == "none":
        return "none", None
    assert data.class_weights is not None
    if scheme == "default":
        scheme = data.class_weights.get("default_scheme", "median_frequency")
    if opts.weight_maps:
        log.warning("class weights %s are applied on top of the weight maps, which already include a class term", scheme)
    weights = data.class_weights.get("schemes", {}).get(scheme)
    if not isinstance(weights, list) or len(weights) != labels.NUM_CLASSES:
        raise TrainError(f"class_weights.json has no {labels.NUM_CLASSES}-value scheme {scheme!r}")
    return scheme, [float(w) for w in weights]


# --- devices -------------------------------------------------------------------------------------


def resolve_precision(precision: str) -> str:
    """auto: mixed_bfloat16 on GPUs with compute capability >= 8 (Ampere+), mixed_float16 on
    7.x (Volta/Turing), float32 otherwise and on CPU."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "float32"
    cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
    if tuple(cc) >= (8, 0):
        return "mixed_bfloat16"
    return "mixed_float16" if tuple(cc) >= (7, 0) else "float32"


def worker_info() -> tuple[int, int, bool]:
    """(this worker's index, number of workers, is chief) from TF_CONFIG (1 worker without it)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = config.get("cluster", {})
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    total = chiefs + workers
    if total <= 1:
        return 0, 1, True
    task = config.get("task", {})
    task_type, task_id = task.get("type", "worker"), int(task.get("index", 0))
    index = task_id if task_type == "chief" else chiefs + task_id
    return index, total, index == 0


def select_strategy() -> Any:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several tasks, MirroredStrategy over all
    visible GPUs when there are more than one, else the default strategy."""
    import tensorflow as tf

    if worker_info()[1] > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    import keras

    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# --- callbacks -----------------------------------------------------------------------------------


def _find_metric(model: Any, cls: type) -> Any:
    stack = list(model.metrics)
    while stack:
        m = stack.pop(0)
        if isinstance(m, cls):
            return m
        stack.extend(getattr(m, "metrics", []) or [])
    return None


def reseed_random_layers(model: Any, seed: int, epoch: int) -> None:
    """Set every SeedGenerator of the model (dropout masks) to a state derived from
    (seed, epoch, layer). Their state is not in the .keras checkpoint (a reloaded Dropout draws
    a fresh seed), so without this a resumed run would draw different masks."""
    import keras
    import numpy as np

    def walk(layer: Any) -> Iterator[Any]:
        for child in getattr(layer, "layers", []):
            yield child
            yield from walk(child)

    generators = []
    for layer in walk(model):
        generators.extend(v for v in vars(layer).values() if isinstance(v, keras.random.SeedGenerator))
    for i, gen in enumerate(generators):
        mixed = np.random.SeedSequence([seed, epoch, i]).generate_state(1)[0] & 0x7FFFFFFF
        gen.state.assign(keras.ops.cast(keras.ops.convert_to_tensor([int(mixed), 0]), gen.state.dtype))


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _make_callbacks(run: _Run) -> list[Any]:
    import keras

    from segops.core.metrics import MeanIoU

    class EpochEnd(keras.callbacks.Callback):
        """Per-class val IoU and lr into the history (and TensorBoard), checkpoint, early stop.
        The logs dict is left alone so the progress bar stays one readable line."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            reseed_random_layers(self.model, run.opts.seed, epoch)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            metric = _find_metric(self.model, MeanIoU)  # holds the validation matrix after evaluate()
            extra = {
                "val_" + class_key(name): float(value)
                for name, value in zip(labels.CLASS_NAMES, metric.per_class_iou(), strict=True)
            }
            extra["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            if writer is not None:
                with writer.as_default(step=epoch):
                    for name, value in extra.items():
                        if name.startswith("val_iou_") and not math.isnan(value):
                            tf.summary.scalar("val_iou/" + name[len("val_iou_") :], value)
                writer.flush()
            run.end_epoch(self.model, epoch, dict(logs or {}), extra)

    writer = None
    callbacks: list[Any] = [EpochEnd()]
    if run.is_chief and not _tensorboard_available():
        log.warning("the tensorboard package is not installed: no TensorBoard logs (pip install tensorboard)")
    elif run.is_chief:
        import tensorflow as tf

        logs_dir = os.path.join(run.out, "logs")
        writer = tf.summary.create_file_writer(os.path.join(logs_dir, "validation_per_class"))
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=logs_dir, write_graph=False, update_freq="epoch", profile_batch=0)
        )
    return callbacks


class _Run:
    """State of one training run: history, best epoch, checkpoint files."""

    def __init__(self, opts: TrainOptions, out: str, is_chief: bool, corrupt: Any) -> None:
        self.opts = opts
        self.out = out
        self.is_chief = is_chief
        self.corrupt = corrupt
        self.ckpt_dir = os.path.join(out, CHECKPOINT_DIR)
        self.history: list[dict[str, Any]] = []
        self.best_epoch = 0
        self.best_miou = float("-inf")
        self.stopped_early = False
        self.extra_state: dict[str, Any] = {}

    def checkpoint_path(self, epoch: int) -> str:
        return os.path.join(self.ckpt_dir, f"epoch-{epoch:04d}.keras")

    def load_state(self) -> dict[str, Any] | None:
        path = os.path.join(self.ckpt_dir, STATE_FILE)
        if not os.path.exists(path):
            return None
        state = _read_json(path, "checkpoint state")
        self.history = state["history"]
        self.best_epoch = state["best_epoch"]
        best = state.get("best_val_mean_iou")
        self.best_miou = float("-inf") if best is None else best
        return state

    def end_epoch(self, model: Any, epoch: int, logs: dict[str, Any], extra: dict[str, float]) -> None:
        done = epoch + 1
        logs = {k: v for k, v in logs.items() if k != "learning_rate"}  # TensorBoard's copy of lr
        row = {"epoch": done, **{k: _json_float(v) for k, v in {**logs, **extra}.items()}}
        self.history.append(row)
        miou = logs.get("val_mean_iou", float("nan"))
        improved = not math.isnan(miou) and miou > self.best_miou
        if improved:
            self.best_epoch, self.best_miou = done, float(miou)
        os.makedirs(self.ckpt_dir, exist_ok=True)
        tmp = self.checkpoint_path(done) + ".tmp.keras"
        model.save(tmp)  # every worker saves (variables may need a collective read); chief's is kept
        os.replace(tmp, self.checkpoint_path(done))
        self.write_state(done)
        for path in glob.glob(os.path.join(self.ckpt_dir, "epoch-*.keras")):
            if path not in (self.checkpoint_path(done), self.checkpoint_path(self.best_epoch)):
                os.remove(path)
        patience = self.opts.early_stopping
        if patience and done - self.best_epoch >= patience:
            log.info("early stopping: val mIoU has not improved for %d epochs", patience)
            self.stopped_early = True
            model.stop_training = True

    def write_state(self, done: int) -> None:
        state = {
            "epoch": done,
            "checkpoint": os.path.basename(self.checkpoint_path(done)),
            "seed": self.opts.seed,
            "options": self.opts.to_json(),
            "best_epoch": self.best_epoch,
            "best_val_mean_iou": _json_float(self.best_miou),
            "stopped_early": self.stopped_early,
            "corrupt_records": self.corrupt.count,
            "history": self.history,
            **self.extra_state,
        }
        _write_json_atomic(os.path.join(self.ckpt_dir, STATE_FILE), state)
        self.write_history()

    def write_history(self) -> None:
        _write_json_atomic(os.path.join(self.out, "history.json"), self.history)
        keys: list[str] = []
        for row in self.history:
            keys.extend(k for k in row if k not in keys)
        tmp = os.path.join(self.out, "history.csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for row in self.history:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
        os.replace(tmp, os.path.join(self.out, "history.csv"))


# --- the loop ------------------------------------------------------------------------------------


def _check_options(opts: TrainOptions, stride: int) -> None:
    from segops.losses import LOSS_KINDS

    if opts.loss not in LOSS_KINDS:
        raise TrainError(f"--loss must be one of {', '.join(LOSS_KINDS)}")
    if opts.precision not in PRECISIONS:
        raise TrainError(f"--precision must be one of {', '.join(PRECISIONS)}")
    if opts.optimizer not in ("adam", "sgd") or opts.lr_schedule not in ("poly", "constant"):
        raise TrainError("--optimizer must be adam or sgd, --lr-schedule poly or constant")
    if opts.epochs < 1 or opts.batch_size < 1 or opts.lr <= 0:
        raise TrainError("--epochs and --batch-size must be >= 1 and --lr > 0")
    h, w = opts.crop
    if h % stride or w % stride or h <= 0 or w <= 0:
        raise TrainError(
            f"--crop {h}x{w}: height and width must be positive multiples of {stride} for {opts.model} "
            + (f"(2**depth with --depth {opts.depth})" if opts.model == "unet" else "(its stride)")
        )
    lo, hi = opts.scale_range
    if not 0 < lo <= hi:
        raise TrainError(f"--scale-range {lo},{hi}: need 0 < min <= max")


def _compile(model: Any, opts: TrainOptions, class_weights: list[float] | None, steps: int) -> None:
    import keras

    from segops.core.metrics import MeanDice, MeanIoU
    from segops.losses import SegmentationLoss

    lr: Any = opts.lr
    if opts.lr_schedule == "poly":
        lr = keras.optimizers.schedules.PolynomialDecay(
            opts.lr, decay_steps=max(opts.epochs * steps, 1), end_learning_rate=0.0, power=0.9
        )
    optimizer = (
        keras.optimizers.Adam(learning_rate=lr)
        if opts.optimizer == "adam"
        else keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    )
    loss = SegmentationLoss(opts.loss, class_weights=class_weights, use_pixel_weights=opts.weight_maps)
    model.compile(optimizer=optimizer, loss=loss, metrics=[MeanIoU(), MeanDice()], jit_compile=bool(opts.xla))


def train(opts: TrainOptions, extra_callbacks: list[Any] | None = None) -> TrainResult:
    """Train, checkpoint every epoch, export best and final. Raises :class:`TrainError` for bad
    input or options before anything is trained. ``extra_callbacks`` run after the built-in
    ones (so after each epoch's checkpoint is written)."""
    from segops.models import MODEL_NAMES, model_stride

    if opts.model not in MODEL_NAMES:
        raise TrainError(f"--model must be one of {', '.join(MODEL_NAMES)}, got {opts.model!r}")
    stride = model_stride(opts.model, **opts.hparams())
    _check_options(opts, stride)
    index, num_workers, is_chief = worker_info()
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    strategy = select_strategy()
    data = check_prepared(opts)
    scheme, class_weights = resolve_class_weights(opts, data)

    out = opts.out if is_chief else os.path.join(opts.out, f".worker-{index}")
    state_path = os.path.join(out, CHECKPOINT_DIR, STATE_FILE)
    if os.path.exists(state_path) and not opts.resume:
        raise TrainError(f"{opts.out} already holds a training run: pass --resume to continue it, or another OUT")
    saved_opts: dict[str, Any] | None = None
    if opts.resume and os.path.exists(state_path):
        saved_opts = _read_json(state_path, "checkpoint state")["options"]
        mine = opts.to_json()
        differ = [k for k in mine if k not in RESUME_FREE_OPTIONS and saved_opts.get(k) != mine[k]]
        if differ:
            raise TrainError(
                "--resume needs the options of the interrupted run; these differ: "
                + ", ".join(f"{k} (was {saved_opts.get(k)!r}, now {mine[k]!r})" for k in differ)
            )
    elif opts.resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out)
    os.makedirs(out, exist_ok=True)

    import keras

    from segops import input_pipeline as ip
    from segops.core.metrics import MeanDice, MeanIoU  # noqa: F401
    from segops.losses import SegmentationLoss  # noqa: F401  (registers the class for load_model)

    precision = resolve_precision(opts.precision)
    if num_workers > 1:
        if len(data.train_files) < num_workers:
            raise TrainError(f"{len(data.train_files)} training shards for {num_workers} workers: prepare more shards")
        # Each worker trains on its own shards. Validation is not split: every worker evaluates
        # all of it, which multiplies the summed confusion matrix by the worker count and leaves
        # IoU/Dice (ratios) unchanged.
        data.train_files = data.train_files[index::num_workers]
    corrupt = ip.CorruptRecords()
    train_records = data.train_records
    if train_records is None:
        train_records = ip.count_records(data.train_files, corrupt)
    else:
        train_records = math.ceil(train_records / num_workers)
    if train_records == 0:
        raise TrainError(f"{opts.prepared}: no readable training records")
    steps = opts.steps_per_epoch or max(train_records * num_workers // opts.batch_size, 1)

    run = _Run(opts, out, is_chief, corrupt)
    run.extra_state = {"precision": precision, "class_weight_scheme": scheme}
    state = run.load_state() if opts.resume else None
    initial_epoch = state["epoch"] if state else 0

    keras.utils.set_random_seed(opts.seed)
    with dtype_policy(precision), strategy.scope():
        if state:
            model = keras.saving.load_model(os.path.join(run.ckpt_dir, state["checkpoint"]))
            if bool(opts.xla) != bool(model.jit_compile):
                model.jit_compile = bool(opts.xla)
        else:
            from segops.models import build_model

            model = build_model(opts.model, **opts.hparams())
            _compile(model, opts, class_weights, steps)

        pipe = ip.PipelineConfig(
            batch_size=opts.batch_size,
            with_weights=opts.weight_maps,
            shuffle_buffer=opts.shuffle_buffer,
            cycle_length=opts.cycle_length,
            threads=opts.data_threads,
        )
        aug = ip.AugmentConfig(
            crop=opts.crop,
            scale_range=opts.scale_range,
            flip=opts.flip,
            **({} if opts.jitter else {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}),
        )
        val_pipe = dataclasses.replace(pipe, batch_size=opts.val_batch_size or opts.batch_size)
        if initial_epoch < opts.epochs and not (state and state.get("stopped_early")):
            train_ds = ip.train_dataset(
                data.train_files,
                aug,
                pipe,
                seed=opts.seed,
                steps_per_epoch=steps,
                initial_epoch=initial_epoch,
                epochs=opts.epochs,
                num_records=train_records,
                corrupt=corrupt,
            )
            val_ds = ip.eval_dataset(data.val_files, val_pipe, size=opts.val_size, stride=stride, corrupt=corrupt)
            with warnings.catch_warnings():
                # Keras says "ran out of data" at the end of every validation pass of a dataset of
                # unknown length; a short *training* input is detected below instead.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                model.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=opts.epochs,
                    initial_epoch=initial_epoch,
                    steps_per_epoch=steps,
                    callbacks=_make_callbacks(run) + list(extra_callbacks or []),
                    verbose=opts.verbose,
                    shuffle=False,
                )
            trained = run.history[-1]["epoch"] if run.history else initial_epoch
            if trained < opts.epochs and not run.stopped_early:
                log.warning("training input ran out after epoch %d of %d (corrupt records?)", trained, opts.epochs)
        elif state and state.get("stopped_early"):
            run.stopped_early = True
    if corrupt.count:
        log.warning("%d corrupt records were skipped (see warnings above)", corrupt.count)
    if not run.history:
        raise TrainError("no epoch was trained")
    return _finish(run, model, opts, stride, precision, scheme, steps)


def _float32_copy(model: Any, opts: TrainOptions) -> Any:
    """The same weights in a float32, uncompiled model (what exports hold, whatever the training
    precision; the .keras file then loads with plain Keras, no segops classes needed)."""
    from segops.models import build_model

    with dtype_policy("float32"):
        copy = build_model(opts.model, **opts.hparams())
    copy.set_weights(model.get_weights())
    return copy


def _finish(
    run: _Run, model: Any, opts: TrainOptions, stride: int, precision: str, scheme: str, steps: int
) -> TrainResult:
    import keras

    from segops import export

    best_row = run.history[run.best_epoch - 1] if run.best_epoch else run.history[-1]
    per_class = {name: best_row.get("val_" + class_key(name)) for name in labels.CLASS_NAMES}
    result = TrainResult(
        out=opts.out,
        epochs_trained=run.history[-1]["epoch"],
        best_epoch=best_row["epoch"],
        best_val_mean_iou=_nan_if_none(best_row.get("val_mean_iou")),
        best_val_iou_per_class=per_class,
        final_val_mean_iou=_nan_if_none(run.history[-1].get("val_mean_iou")),
        corrupt_records=run.corrupt.count,
        history=run.history,
        stopped_early=run.stopped_early,
    )
    if not run.is_chief or not opts.export:
        return result

    training = {
        **opts.to_json(),
        "precision_used": precision,
        "class_weight_scheme": scheme,
        "steps_per_epoch": steps,
        "hparams": opts.hparams(),
        "epochs_trained": result.epochs_trained,
        "stopped_early": run.stopped_early,
        "corrupt_records": run.corrupt.count,
    }

    def info(row: dict[str, Any]) -> export.ModelInfo:
        return export.ModelInfo(
            architecture=opts.model,
            num_classes=labels.NUM_CLASSES,
            input_size=tuple(opts.crop),
            stride=stride,
            training=training,
            metrics={
                "epoch": row["epoch"],
                "val_mean_iou": row.get("val_mean_iou"),
                "val_mean_dice": row.get("val_mean_dice"),
                "val_loss": row.get("val_loss"),
                "val_iou_per_class": {n: row.get("val_" + class_key(n)) for n in labels.CLASS_NAMES},
                "best_val_mean_iou": result.best_val_mean_iou,
            },
        )

    final_info = export.export_model(_float32_copy(model, opts), os.path.join(opts.out, "final"), info(run.history[-1]))
    best_model = keras.saving.load_model(run.checkpoint_path(best_row["epoch"]), compile=False)
    best_info = export.export_model(_float32_copy(best_model, opts), os.path.join(opts.out, "best"), info(best_row))
    summary = {
        "default_export": "best",
        "best": {"dir": "best", "model_id": best_info.model_id, **best_info.metrics},
        "final": {"dir": "final", "model_id": final_info.model_id, **final_info.metrics},
        "architecture": opts.model,
        "epochs_trained": result.epochs_trained,
        "stopped_early": run.stopped_early,
        "corrupt_records": run.corrupt.count,
        "history": "history.json",
        "training": training,
    }
    _write_json_atomic(os.path.join(opts.out, export.MODEL_JSON), summary)
    return result
