"""`segops report [RUN_DIR] [--infer DIR] [--prepared DIR] [--model DIR] [--out DIR]`."""

from __future__ import annotations

import os

import click

from segops.commands.common import CONTEXT_SETTINGS
from segops.report import DEFAULT_GALLERY_SIZE, MAX_GALLERY_SIZE


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("run_dir", required=False, metavar="[RUN_DIR]")
@click.option("--infer", "infer_dir", default=None, metavar="DIR",
              help="Output of `segops infer` (summary.json, results/, masks/). Default: RUN_DIR/infer.")  # fmt: skip
@click.option("--prepared", default=None, metavar="DIR",
              help="Output of `segops prepare` (stats.json, class_weights.json). Default: RUN_DIR/prepared.")  # fmt: skip
@click.option("--model", "model_dir", default=None, metavar="DIR",
              help="Output of `segops train` (history.json; its export recomputes the gallery's pre-CRF "
                   "predictions). Default: RUN_DIR/model, else the model the infer run used.")  # fmt: skip
@click.option("--out", default=None, metavar="DIR", help="Where report.html and the PNGs go. Default: RUN_DIR/report.")
@click.option("--gallery", "gallery_size", type=click.IntRange(0, MAX_GALLERY_SIZE), default=DEFAULT_GALLERY_SIZE,
              show_default=True, help="Images in each of the best and worst galleries.")  # fmt: skip
def command(run_dir: str | None, infer_dir: str | None, prepared: str | None, model_dir: str | None,
            out: str | None, gallery_size: int) -> None:  # fmt: skip
    """Self-contained HTML quality report with plots for a run directory.

    Writes OUT/report.html (one file, every plot embedded as a data: URI, opens offline) and the
    plots as PNGs next to it: per-class IoU before/after CRF, the normalised confusion matrix,
    class frequencies and class weights (prepare), training curves (train), the distribution of
    per-image mIoU, and galleries of the best and worst images (image | ground truth |
    prediction | CRF). RUN_DIR is laid out as `segops demo` makes it (RUN_DIR/prepared,
    RUN_DIR/model, RUN_DIR/infer, RUN_DIR/report); the options point at stage directories
    elsewhere. Sections whose input is missing are left out.
    """
    from segops.report import ReportError, ReportPaths, build_report, format_headline

    try:
        paths = ReportPaths.for_run_dir(run_dir, infer=infer_dir, prepared=prepared, model=model_dir, out=out)
    except ReportError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        result = build_report(paths, gallery_size=gallery_size)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_headline(result.headline))
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"\nreport  {os.path.abspath(result.html)}")
    click.echo(f"plots   {', '.join(os.path.basename(p) for p in result.plots.values())} in {os.path.abspath(paths.out)}")
