"""`segops compare INFER_OUT --model NEW [--against OLD]`: what changed between two models' masks
(segops.report.compare)."""

from __future__ import annotations

import click

from segops.commands.common import CONTEXT_SETTINGS
from segops.report.compare import DEFAULT_TOP


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("infer_out", metavar="INFER_OUT")
@click.option("--model", "new_model", required=True, metavar="NEW", help="The model whose masks replaced another's.")
@click.option("--against", default=None, metavar="OLD",
              help="The model it replaced. Default: the one model NEW's rows recorded. Also takes the "
                   "masks that recorded no model (written by older segops versions) as OLD's.")  # fmt: skip
@click.option("--top", type=click.IntRange(min=0), default=DEFAULT_TOP, show_default=True,
              help="How many class changes and most-changed images to print (and keep in the JSON).")  # fmt: skip
def command(infer_out: str, new_model: str, against: str | None, top: int) -> None:
    """Compare NEW's masks with the OLD masks they replaced in INFER_OUT.

    Per image: pixel agreement, changed fraction, both models' mIoU (with ground truth); the
    class-by-class transition matrix; dataset-level agreement and mIoU. Writes
    INFER_OUT/review/compare_<OLD>_<NEW>.parquet (a ranking for `segops review select
    --ranking`, most changed first) and compare_<OLD>_<NEW>.json.
    """
    from segops.inference.table import TableError
    from segops.report.compare import CompareError, compare, format_comparison, summary, write_comparison

    try:
        result = compare(infer_out, new_model, against)
    except (CompareError, TableError) as exc:
        raise click.ClickException(str(exc)) from exc
    paths = write_comparison(infer_out, result, top)
    click.echo(format_comparison(summary(result, top)))
    click.echo(f"\nper image -> {paths['parquet']}\nsummary   -> {paths['json']}")
