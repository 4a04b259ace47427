"""`segops train PREPARED OUT [options]`: flags onto :class:`segops.training.options.TrainOptions`
(choices and defaults from its dataclasses), then the summary of the run."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from segops.commands.common import CONTEXT_SETTINGS, build_options, hw_callback, output_errors, range_callback
from segops.core import layout
from segops.core.formatting import fmt_score
from segops.core.options import OptionsError, default_of
from segops.models import BACKBONE_NAMES, MODEL_NAMES, NO_BACKBONE, OUTPUT_STRIDES, UPSAMPLING_MODES
from segops.training.options import (
    CLASS_WEIGHT_CHOICES,
    INPUT_DOWNSAMPLES,
    LOSS_HPARAMS,
    LOSS_TERMS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    AnnotationMix,
    AugmentConfig,
    ModelOptions,
    OptimOptions,
    PipelineConfig,
    TrainOptions,
)

_PARSE_HW = hw_callback()


def _crop_callback(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int] | None:
    return None if value.strip().lower() == "auto" else _PARSE_HW(ctx, param, value)

_SCALE = default_of(AugmentConfig, "scale_range")


def _loss_hparam_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per hyper-parameter of the registered loss terms (--focal-gamma, --ohem-fraction,
    ...), in their order, with the range, default, metavar and help of its HParam."""
    for hp in reversed(LOSS_HPARAMS):
        shown = {"show_default": True} if hp.default is not None else {}
        value_range = click.FloatRange(hp.low, hp.high, min_open=hp.low_open, max_open=hp.high_open)
        command = click.option(hp.flag, type=value_range, default=hp.default, metavar=hp.metavar, help=hp.help,
                               **shown)(command)  # fmt: skip
    return command


def _fmt(value: float | None) -> str:
    return fmt_score(value, digits=3, missing="   -  ", width=6)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prepared", metavar="PREPARED")
@click.argument("out", metavar="OUT")
@click.option("--model", type=click.Choice(MODEL_NAMES), default=default_of(ModelOptions, "name"), show_default=True,
              help="Architecture. Crops must be multiples of its stride: 8 (Fast-SCNN, DDRNet-23-slim), "
                   "2**depth (U-Net, SegNet-Basic), 32 (FCN-8s, SegNet, U-Net with a backbone), --output-stride "
                   "(DeepLabV3+); times --input-downsample.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(1), default=default_of(OptimOptions, "epochs"), show_default=True,
              help="Epochs to train.")  # fmt: skip
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=default_of(OptimOptions, "time_budget"),
              metavar="MINUTES",
              help="Fit the whole command (start-up, training, validation, export) in this wall-clock time: the "
                   "step time is measured first and the steps, validation cadence and lr schedule planned "
                   "over the budget (--epochs and --steps-per-epoch are then ignored).")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(1), default=default_of(PipelineConfig, "batch_size"),
              show_default=True, help="Global batch size (split over GPUs / workers).")  # fmt: skip
@click.option("--crop", default="auto", show_default=True, callback=_crop_callback,
              help="Training crop HxW (after random scaling); auto: the prepared image size, at most "
                   "512x1024, rounded down to the model's stride. A crop larger than a scaled image is "
                   "padded with ignore pixels.")  # fmt: skip
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=default_of(OptimOptions, "lr"),
              show_default=True, help="Initial learning rate.")  # fmt: skip
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=default_of(OptimOptions, "optimizer"),
              show_default=True, help="Adam, or SGD with momentum 0.9.")  # fmt: skip
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=default_of(OptimOptions, "lr_schedule"),
              show_default=True, help="poly: lr * (1 - step/total)^0.9, the usual segmentation schedule.")  # fmt: skip
@click.option("--warmup", type=click.FloatRange(0, 1, max_open=True), default=default_of(OptimOptions, "warmup"),
              show_default=True,
              help="poly schedule: share of all steps over which the lr rises linearly from lr/10 to lr.")  # fmt: skip
@click.option("--loss", default=default_of(OptimOptions, "loss"), show_default=True, metavar="TERM[*W][+TERM[*W]...]",
              help=f"Sum of loss terms, each optionally weighted: {', '.join(LOSS_TERMS)} (e.g. ce+dice, "
                   "ce+lovasz, focal*0.5+jaccard). ce: weighted cross-entropy; focal: focal loss; ohem: CE "
                   "over the hardest pixels; dice / jaccard: soft Dice / IoU; lovasz: Lovász-softmax "
                   "(optimises IoU). Class weights and weight maps apply to ce, focal and ohem only.")  # fmt: skip
@_loss_hparam_options
@click.option("--class-weights", type=click.Choice(CLASS_WEIGHT_CHOICES),
              default=default_of(OptimOptions, "class_weights"), show_default=True,
              help="Per-class CE weights from PREPARED/class_weights.json ('default': its default_scheme).")  # fmt: skip
@click.option("--weight-maps/--no-weight-maps", default=default_of(PipelineConfig, "weight_maps"), show_default=True,
              help="Multiply the CE by the records' U-Net weight maps (they already include the prepare-time "
                   "class weights, so usually combine with --class-weights none).")  # fmt: skip
@click.option("--depth", type=click.IntRange(1, 8), default=default_of(ModelOptions, "depth"), show_default=True,
              help="U-Net levels.")  # fmt: skip
@click.option("--base-filters", type=click.IntRange(1), default=default_of(ModelOptions, "base_filters"),
              show_default=True,
              help="Channels of the first level (doubling per level; FCN-8s: VGG widths x base/64).")  # fmt: skip
@click.option("--upsampling", type=click.Choice(UPSAMPLING_MODES), default=default_of(ModelOptions, "upsampling"),
              show_default=True, help="U-Net decoder upsampling.")  # fmt: skip
@click.option("--dilated/--no-dilated", default=default_of(ModelOptions, "dilated"), show_default=True,
              help="Atrous block (rates 1,2,4,8) in the U-Net bottleneck / FCN fc6.")  # fmt: skip
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=default_of(ModelOptions, "dropout"),
              show_default=True, help="Dropout at the bottleneck (U-Net) / after fc6, fc7 (FCN-8s).")  # fmt: skip
@click.option("--backbone", type=click.Choice((NO_BACKBONE, *BACKBONE_NAMES)),
              default=default_of(ModelOptions, "backbone"), show_default=True,
              help="Pretrained keras.applications encoder (unet, fcn8s, deeplabv3plus; segnet: vgg16).")  # fmt: skip
@click.option("--backbone-weights", default=default_of(ModelOptions, "backbone_weights"), show_default=True,
              metavar="none|imagenet|PATH",
              help="Encoder weights: random, ImageNet (Keras downloads them once) or a weights file of that "
                   "encoder (.h5 / .weights.h5).")  # fmt: skip
@click.option("--output-stride", type=click.Choice([str(s) for s in OUTPUT_STRIDES]),
              default=str(default_of(ModelOptions, "output_stride")), show_default=True,
              callback=lambda _ctx, _param, value: int(value),
              help="DeepLabV3+ encoder output stride (ASPP rates 6,12,18 at 16, doubled at 8).")  # fmt: skip
@click.option("--freeze-backbone-epochs", type=click.IntRange(0),
              default=default_of(ModelOptions, "freeze_backbone_epochs"), show_default=True,
              help="Train with the pretrained encoder frozen for this many first epochs, then fine-tune it.")  # fmt: skip
@click.option("--input-downsample", type=click.Choice([str(f) for f in INPUT_DOWNSAMPLES]),
              default=str(default_of(ModelOptions, "input_downsample")), show_default=True,
              callback=lambda _ctx, _param, value: int(value),
              help="Run the network on images average-pooled by this factor (its logits upsampled back): "
                   "factor**2 fewer pixels per step; exports still take full-size images.")  # fmt: skip
@click.option("--scale-range", default=f"{_SCALE[0]},{_SCALE[1]}", show_default=True, callback=range_callback,
              help="Random scale MIN,MAX applied before the crop (1,1 disables).")  # fmt: skip
@click.option("--flip/--no-flip", default=default_of(AugmentConfig, "flip"), show_default=True,
              help="Random horizontal flips.")  # fmt: skip
@click.option("--jitter/--no-jitter", default=default_of(AugmentConfig, "jitter"), show_default=True,
              help="Random brightness, contrast and saturation.")  # fmt: skip
@click.option("--precision", type=click.Choice(PRECISIONS), default=default_of(TrainOptions, "precision"),
              show_default=True,
              help="auto: mixed_bfloat16 on Ampere+ GPUs, mixed_float16 on Volta/Turing, float32 on CPU.")  # fmt: skip
@click.option("--xla/--no-xla", default=default_of(TrainOptions, "xla"),
              help="Compile train/eval steps with XLA. Default: on a single GPU, off on CPU (with oneDNN "
                   "kernels XLA measured no faster there) and under multi-device strategies.")  # fmt: skip
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoints (same options; same result as an uninterrupted run).")  # fmt: skip
@click.option("--early-stopping", "early_stopping", type=click.IntRange(1),
              default=default_of(OptimOptions, "early_stopping"), metavar="PATIENCE",
              help="Stop after PATIENCE epochs without a better val mIoU.")  # fmt: skip
@click.option("--seed", type=int, default=default_of(TrainOptions, "seed"), show_default=True,
              help="Seeds initialisation, data order and augmentation.")  # fmt: skip
@click.option("--val-size", default=None, callback=hw_callback(optional=True), metavar="HxW",
              help="Resize validation images to HxW (default: the prepared size).")  # fmt: skip
@click.option("--val-batch-size", type=click.IntRange(1), default=default_of(PipelineConfig, "val_batch_size"),
              help="Default: --batch-size.")  # fmt: skip
@click.option("--steps-per-epoch", type=click.IntRange(1), default=default_of(OptimOptions, "steps_per_epoch"),
              help="Default: training records // batch size.")  # fmt: skip
@click.option("--train-split", default=default_of(PipelineConfig, "train_split"), show_default=True,
              help="Split to train on.")  # fmt: skip
@click.option("--val-split", default=default_of(PipelineConfig, "val_split"), show_default=True,
              help="Split to validate on (best model, early stop).")  # fmt: skip
@click.option("--data-threads", type=click.IntRange(1), default=default_of(PipelineConfig, "data_threads"),
              help="Threads of the input pipeline (default: TensorFlow's choice).")  # fmt: skip
@click.option("--export/--no-export", default=default_of(TrainOptions, "export"), show_default=True,
              help="Export OUT/best and OUT/final at the end (--no-export: checkpoints and history only).")  # fmt: skip
@click.option("--coarse-ratio", type=click.FloatRange(0, 1), default=default_of(AnnotationMix, "coarse_ratio"),
              show_default=True,
              help="Share of training examples drawn from the coarse annotations (prepare --annotations "
                   "fine+coarse); 0: fine only, 1: coarse only.")  # fmt: skip
@click.option("--coarse-epochs", type=click.IntRange(0), default=default_of(AnnotationMix, "coarse_epochs"),
              show_default=True,
              help="Train the first N epochs on coarse annotations only, then on the --coarse-ratio mix.")  # fmt: skip
@click.option("--coarse-splits", default=",".join(default_of(AnnotationMix, "coarse_splits")), show_default=True,
              callback=lambda _ctx, _param, value: tuple(s.strip() for s in value.split(",") if s.strip()),
              help="Coarse parts to train on (PREPARED/coarse/<split>/; those found). Validation is always "
                   "on the fine --val-split.")  # fmt: skip
@click.option("--progress/--no-progress", default=True, show_default=True, help="Keras progress bar per epoch.")
def command(prepared: str, out: str, progress: bool, **kwargs: object) -> None:
    """Train Fast-SCNN, DDRNet-23-slim, U-Net, FCN-8s, SegNet or DeepLabV3+ on the TFRecords of `segops prepare` (PREPARED) and export it to OUT.

    Writes OUT/best/ and OUT/final/ (export directories for `segops infer OUT`: model.keras,
    saved_model/ taking uint8 images, model.json), OUT/model.json, OUT/history.csv and .json (loss,
    val_loss, val_mean_iou, val_mean_dice, lr, val per-class IoU per epoch), OUT/logs/
    (TensorBoard) and OUT/checkpoints/ (every epoch; --resume continues from the last one).

    Uses every visible GPU (MirroredStrategy) and several machines with TF_CONFIG
    (MultiWorkerMirroredStrategy); see docs/train.md.
    """
    from segops.core import storage
    from segops.training.loop import train

    if storage.scheme_of(out):
        raise click.UsageError(f"OUT {out} is on object storage: Keras writes checkpoints and exports to a local "
                               "directory; train into one and copy it (segops infer reads a model from s3:// or gs://)")  # fmt: skip
    if storage.scheme_of(prepared):
        # TensorFlow 2.21 has no s3:// filesystem (tensorflow-io is gone) and re-reads the shards
        # every epoch: one local copy, cached by listing, serves every epoch and a --resume
        click.echo(f"copying {prepared} to the local cache ({storage.cache_dir()}) ...")
        try:
            prepared = storage.local_copy(prepared)
        except FileNotFoundError:
            raise click.UsageError(f"prepared directory {prepared} does not exist: run `segops prepare` first") from None
    # What the user can fix (options, the prepared directory, an incompatible OUT) is a usage
    # error (exit 2) whether found at once or by train()'s checks before it trains, as in every command.
    options = build_options(TrainOptions.from_flat, prepared=prepared, out=out, verbose=1 if progress else 2,
                            **kwargs)  # fmt: skip
    try:
        with output_errors(options.out, "model.json"):
            result = train(options, on_plan=click.echo)
    except OptionsError as exc:
        raise click.UsageError(str(exc)) from exc

    click.echo(
        f"\ntrained {result.epochs_trained} epoch(s){' (stopped early)' if result.stopped_early else ''}; "
        f"best val mIoU {_fmt(result.best_val_mean_iou).strip()} at epoch {result.best_epoch}, "
        f"final {_fmt(result.final_val_mean_iou).strip()}"
    )
    if result.corrupt_records:
        click.echo(f"skipped {result.corrupt_records} corrupt record(s) (see the warnings above)")
    click.echo("\nper-class val IoU (best epoch; '-' = class in neither ground truth nor prediction):")
    class_names = list(result.best_val_iou_per_class)  # the prepared label set's, in train-id order
    width = max(len(n) for n in class_names)
    for name in class_names:
        click.echo(f"  {name:<{width}}  {_fmt(result.best_val_iou_per_class.get(name))}")
    if options.export:
        click.echo(f"\nexports: {os.path.join(out, layout.BEST_EXPORT)} (default), {os.path.join(out, layout.FINAL_EXPORT)}")
