"""`segops review select | export | import`: the relabeling loop (segops.review, docs/review.md);
select's and export's flags are generated from SelectOptions and ExportOptions."""

from __future__ import annotations

from typing import Any

import click

from segops.commands.common import CONTEXT_SETTINGS, build_options
from segops.commands.flags import options_from
from segops.review import ReviewError
from segops.review.export import ExportOptions
from segops.review.importer import FORMATS as IMPORT_FORMATS
from segops.review.select import SelectOptions


@click.group(name="review", context_settings=CONTEXT_SETTINGS)
def command() -> None:
    """Relabeling loop: pick images to check, export them to a labeling tool, import corrections.

    infer -> review select -> review export -> (people correct in Label Studio / CVAT) ->
    review import -> prepare -> train. Recipe: docs/review.md.
    """


@command.command(name="select", context_settings=CONTEXT_SETTINGS)
@click.argument("infer_out", metavar="INFER_OUT")
@options_from(SelectOptions)
@click.option("--out", default=None, metavar="FILE", help="Selection Parquet file. Default: INFER_OUT/review/selection.parquet.")
def select_command(infer_out: str, out: str | None, **kw: Any) -> None:
    """Pick images to check from the results table of INFER_OUT; print and save the selection."""
    from segops.inference.table import TableError
    from segops.review.select import format_selection, select, selection_path, write_selection

    options = build_options(SelectOptions.from_flat, **kw)
    try:
        selection = select(infer_out, options)
    except (ReviewError, TableError) as exc:
        raise click.ClickException(str(exc)) from exc
    path = out or selection_path(infer_out)
    write_selection(selection, path)
    click.echo(format_selection(selection))
    click.echo(f"\n{selection.num_rows} image(s) selected -> {path}")


@command.command(name="export", context_settings=CONTEXT_SETTINGS)
@click.argument("infer_out", metavar="INFER_OUT")
@click.option("--selection", default=None, metavar="FILE", help="Default: INFER_OUT/review/selection.parquet.")
@click.option("--out", default=None, metavar="DIR", help="Default: INFER_OUT/review.")
@options_from(ExportOptions)
def export_command(infer_out: str, selection: str | None, out: str | None, **kw: Any) -> None:
    """Write the selection with the predicted masks as Label Studio tasks and COCO RLE."""
    from segops.core import fs, layout
    from segops.review.export import export_selection
    from segops.review.select import read_selection, selection_path

    options = build_options(ExportOptions.from_flat, **kw)
    try:
        rows = read_selection(selection or selection_path(infer_out))
        written = export_selection(infer_out, rows, out or fs.join(infer_out, layout.REVIEW_DIR), options)
    except ReviewError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{rows.num_rows} image(s) exported")
    for key, path in written.items():
        click.echo(f"{key:<22}{path}")


@command.command(name="import", context_settings=CONTEXT_SETTINGS)
@click.argument("corrections", metavar="FILE")
@click.option("--format", "fmt", type=click.Choice(IMPORT_FORMATS), default="auto", show_default=True,
              help="Label Studio JSON export or COCO instances JSON (auto: from the file's shape).")  # fmt: skip
@click.option("--image-root", default=None, metavar="DIR",
              help="Root that relative image names (COCO file_name, Label Studio ?d= paths) start from, for "
                   "files without segops_path (e.g. a CVAT export).")  # fmt: skip
@click.option("--label-set", default=None, metavar="NAME|FILE",
              help="Taxonomy of the dataset's labelIds (the one it was prepared with): a built-in "
                   "(cityscapes, camvid11, ade20k150) or a label-set JSON file. Default: cityscapes.")  # fmt: skip
def import_command(corrections: str, fmt: str, image_root: str | None, label_set: str | None) -> None:
    """Write the corrected masks of FILE as gtFine *_gtFine_labelIds.png next to the images."""
    from segops.core.label_sets import LabelSetError, load_label_set
    from segops.review.importer import import_corrections

    try:
        report = import_corrections(corrections, fmt, image_root, load_label_set(label_set))
    except LabelSetError as exc:
        raise click.UsageError(str(exc)) from exc
    except (ReviewError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    for path in report.written:
        click.echo(f"wrote {path}")
    click.echo(f"{len(report.written)} labelIds PNG(s) written, {len(report.skipped)} image(s) without an annotation skipped")
