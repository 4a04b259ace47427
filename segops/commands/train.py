"""`segops train PREPARED OUT [options]`."""

from __future__ import annotations

import math
import os

import click

from segops.core.labels import CLASS_NAMES

CLASS_WEIGHT_CHOICES = ("none", "default", "median_frequency", "enet", "inverse_frequency")


def _size(_ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """'HxW' -> (H, W)."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW (e.g. 256x512)", param=param) from None
    if h <= 0 or w <= 0:
        raise click.BadParameter(f"{value!r}: height and width must be positive", param=param)
    return h, w


def _range(_ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not MIN,MAX (e.g. 0.5,2.0)", param=param) from None
    if not 0 < lo <= hi:
        raise click.BadParameter(f"{value!r}: need 0 < MIN <= MAX", param=param)
    return lo, hi


def _fmt(value: float | None) -> str:
    return "   -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.3f}"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("prepared", metavar="PREPARED")
@click.argument("out", metavar="OUT")
@click.option("--model", type=click.Choice(["unet", "fcn8s"]), default="unet", show_default=True,
              help="Architecture. Crops must be multiples of 2**depth (U-Net) or 32 (FCN-8s).")  # fmt: skip
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True, help="Epochs to train.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Global batch size (split over GPUs / workers).")  # fmt: skip
@click.option("--crop", default="256x512", show_default=True, callback=_size,
              help="Training crop HxW (after random scaling). The built-in dataset is 256x512.")  # fmt: skip
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True,
              help="Initial learning rate.")  # fmt: skip
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              help="Adam, or SGD with momentum 0.9.")  # fmt: skip
@click.option("--lr-schedule", type=click.Choice(["poly", "constant"]), default="poly", show_default=True,
              help="poly: lr * (1 - step/total)^0.9, the usual segmentation schedule.")  # fmt: skip
@click.option("--loss", type=click.Choice(["ce", "dice", "ce+dice"]), default="ce", show_default=True,
              help="Weighted cross-entropy, soft Dice, or their sum.")  # fmt: skip
@click.option("--class-weights", type=click.Choice(CLASS_WEIGHT_CHOICES), default="none", show_default=True,
              help="Per-class CE weights from PREPARED/class_weights.json ('default': its default_scheme).")  # fmt: skip
@click.option("--weight-maps/--no-weight-maps", default=False, show_default=True,
              help="Multiply the CE by the records' U-Net weight maps (they already include the prepare-time "
                   "class weights, so usually combine with --class-weights none).")  # fmt: skip
@click.option("--depth", type=click.IntRange(1, 8), default=4, show_default=True, help="U-Net levels.")
@click.option("--base-filters", type=click.IntRange(1), default=32, show_default=True,
              help="Channels of the first level (doubling per level; FCN-8s: VGG widths x base/64).")  # fmt: skip
@click.option("--upsampling", type=click.Choice(["transpose", "bilinear"]), default="transpose",
              show_default=True, help="U-Net decoder upsampling.")  # fmt: skip
@click.option("--dilated/--no-dilated", default=False, show_default=True,
              help="Atrous block (rates 1,2,4,8) in the U-Net bottleneck / FCN fc6.")  # fmt: skip
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Dropout at the bottleneck (U-Net) / after fc6, fc7 (FCN-8s).")  # fmt: skip
@click.option("--scale-range", default="0.5,2.0", show_default=True, callback=_range,
              help="Random scale MIN,MAX applied before the crop (1,1 disables).")  # fmt: skip
@click.option("--flip/--no-flip", default=True, show_default=True, help="Random horizontal flips.")
@click.option("--jitter/--no-jitter", default=True, show_default=True,
              help="Random brightness, contrast and saturation.")  # fmt: skip
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_float16", "mixed_bfloat16"]),
              default="auto", show_default=True,
              help="auto: mixed_bfloat16 on Ampere+ GPUs, mixed_float16 on Volta/Turing, float32 on CPU.")  # fmt: skip
@click.option("--xla/--no-xla", default=False, show_default=True, help="Compile train/eval steps with XLA.")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoints (same options; same result as an uninterrupted run).")  # fmt: skip
@click.option("--early-stopping", "early_stopping", type=click.IntRange(1), default=None, metavar="PATIENCE",
              help="Stop after PATIENCE epochs without a better val mIoU.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds initialisation, data order and augmentation.")  # fmt: skip
@click.option("--val-size", default=None, callback=_size, metavar="HxW",
              help="Resize validation images to HxW (default: the prepared size).")  # fmt: skip
@click.option("--val-batch-size", type=click.IntRange(1), default=None, help="Default: --batch-size.")
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None,
              help="Default: training records // batch size.")  # fmt: skip
@click.option("--train-split", default="train", show_default=True, help="Split to train on.")
@click.option("--val-split", default="val", show_default=True, help="Split to validate on (best model, early stop).")
@click.option("--data-threads", type=click.IntRange(1), default=None,
              help="Threads of the input pipeline (default: TensorFlow's choice).")  # fmt: skip
@click.option("--export/--no-export", default=True, show_default=True,
              help="Export OUT/best and OUT/final at the end (--no-export: checkpoints and history only).")  # fmt: skip
@click.option("--progress/--no-progress", default=True, show_default=True, help="Keras progress bar per epoch.")
def command(prepared: str, out: str, progress: bool, **kwargs: object) -> None:
    """Train U-Net or FCN-8s on the TFRecords of `segops prepare` (PREPARED) and export it to OUT.

    Writes OUT/best/ and OUT/final/ (export directories for `segops infer OUT`: model.keras,
    saved_model/ taking uint8 images, model.json), OUT/model.json, OUT/history.csv and .json (loss,
    val_loss, val_mean_iou, val_mean_dice, lr, val per-class IoU per epoch), OUT/logs/
    (TensorBoard) and OUT/checkpoints/ (every epoch; --resume continues from the last one).

    Uses every visible GPU (MirroredStrategy) and several machines with TF_CONFIG
    (MultiWorkerMirroredStrategy); see docs/train.md.
    """
    from segops.train import TrainError, TrainOptions, train

    options = TrainOptions(prepared=prepared, out=out, verbose=1 if progress else 2, **kwargs)  # type: ignore[arg-type]
    try:
        result = train(options)
    except TrainError as exc:
        raise click.ClickException(str(exc)) from exc

    click.echo(
        f"\ntrained {result.epochs_trained} epoch(s){' (stopped early)' if result.stopped_early else ''}; "
        f"best val mIoU {_fmt(result.best_val_mean_iou).strip()} at epoch {result.best_epoch}, "
        f"final {_fmt(result.final_val_mean_iou).strip()}"
    )
    if result.corrupt_records:
        click.echo(f"skipped {result.corrupt_records} corrupt record(s) (see the warnings above)")
    click.echo("\nper-class val IoU (best epoch; '-' = class in neither ground truth nor prediction):")
    width = max(len(n) for n in CLASS_NAMES)
    for name in CLASS_NAMES:
        click.echo(f"  {name:<{width}}  {_fmt(result.best_val_iou_per_class.get(name))}")
    if options.export:
        click.echo(f"\nexports: {os.path.join(out, 'best')} (default), {os.path.join(out, 'final')}")
