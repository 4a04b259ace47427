"""`segops prepare INPUT OUT [options] [-- beam options]`: flags -> PrepareOptions, run the
pipeline (workflows.prepare), print the summary. The flags are generated from PrepareOptions."""

from __future__ import annotations

import os
from typing import Any

import click

from segops.commands.common import CONTEXT_SETTINGS, build_options, check_beam_args, output_errors
from segops.commands.flags import options_from
from segops.core.fs import has_scheme, normalise
from segops.core.options import OptionsError
from segops.prepare.options import PrepareOptions


def _check_input(path: str) -> None:
    # An object store has no directories: its bucket and credentials are checked (one line, exit
    # 2); an empty listing there fails later with its own message.
    if has_scheme(path):
        from segops.core import storage

        storage.check_access(path, write=False)
    elif not os.path.isdir(path):
        raise click.UsageError(f"input directory {path!r} does not exist")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("input_dir", metavar="INPUT")
@click.argument("output_dir", metavar="OUT")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_OPTIONS...]")
@options_from(PrepareOptions)
def command(input_dir: str, output_dir: str, beam_args: tuple[str, ...], **kw: Any) -> None:
    """Raw Cityscapes layout in INPUT -> sharded TFRecords, stats.json, class_weights.json and
    manifest.json in OUT, bad inputs in OUT/dead_letter.jsonl (Apache Beam).

    Beam options go after `--`, e.g.
    `segops prepare data prepared -- --direct_num_workers=2 --direct_running_mode=multi_processing`.
    """
    beam_options = check_beam_args(beam_args)
    from segops.core import layout
    from segops.core.fs import join, read_json
    from segops.datasets.cityscapes import DiscoveryError
    from segops.prepare.summary import summary_text
    from workflows.prepare import run_prepare

    _check_input(input_dir)
    options = build_options(PrepareOptions.from_flat, input=normalise(input_dir), output=normalise(output_dir), **kw)
    try:
        with output_errors(options.output):
            manifest = run_prepare(options, beam_options)
    except DiscoveryError as exc:
        raise click.ClickException(str(exc)) from exc
    except OptionsError as exc:  # options that only make sense against the listing (--weights-split)
        raise click.UsageError(str(exc)) from exc

    stats = read_json(join(options.output, layout.STATS_FILE))
    class_weights = read_json(join(options.output, layout.CLASS_WEIGHTS_FILE))
    click.echo(summary_text(manifest, stats, class_weights))
