"""`segops train PREPARED OUT [options]`: flags onto :class:`segops.training.options.TrainOptions`
(generated from its dataclasses' fields), then the summary of the run."""

from __future__ import annotations

import os

import click

from segops.commands.common import CONTEXT_SETTINGS, build_options, output_errors
from segops.commands.flags import options_from
from segops.core import layout
from segops.core.formatting import fmt_score
from segops.core.options import OptionsError
from segops.training.options import TrainOptions


def _fmt(value: float | None) -> str:
    return fmt_score(value, digits=3, missing="   -  ", width=6)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prepared", metavar="PREPARED")
@click.argument("out", metavar="OUT")
@options_from(TrainOptions)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Keras progress bar per epoch.")
def command(prepared: str, out: str, progress: bool, **kwargs: object) -> None:
    """Train a segmentation network (--model) on the TFRecords of `segops prepare` (PREPARED) and export it to OUT.

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
