"""`segops prepare INPUT OUT [options] [-- beam options]`."""

from __future__ import annotations

import json
import os

import click

from segops.core.imageio import DEFAULT_MAX_PIXELS
from segops.weights import DEFAULT_SCHEME, SCHEMES


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    """--splits train,val and --splits train --splits val both work."""
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


def _local(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.get_scheme(path) is None


def _check_input(path: str) -> None:
    # Local paths only: object stores have no directories to check; an empty listing there
    # fails later with its own message.
    if _local(path) and not os.path.isdir(path):
        raise click.UsageError(f"input directory {path!r} does not exist")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_dir", metavar="INPUT")
@click.argument("output_dir", metavar="OUT")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_OPTIONS...]")
@click.option("--splits", multiple=True, help="Splits to prepare, comma-separated (default: all usable ones found).")
@click.option("--unlabeled-splits", default="test", show_default=True,
              help="Splits without usable labels: written image-only (all-ignore label), left out of statistics. "
                   "'' to treat every split as labelled.")  # fmt: skip
@click.option("--shards", type=click.IntRange(1, 99999), default=None,
              help="Shards per split (default: one per ~128 MiB of input images).")  # fmt: skip
@click.option("--weight-maps/--no-weight-maps", default=True, show_default=True,
              help="Write U-Net per-pixel weight maps (class weight + border term).")  # fmt: skip
@click.option("--weight-scheme", type=click.Choice(SCHEMES), default=DEFAULT_SCHEME, show_default=True,
              help="Class-weight scheme used in the weight maps (all are written to class_weights.json).")  # fmt: skip
@click.option("--weights-split", default=None, help="Split the class weights come from (default: train).")
@click.option("--w0", type=float, default=10.0, show_default=True, help="U-Net border weight w0.")
@click.option("--sigma", type=float, default=5.0, show_default=True, help="U-Net border sigma, in pixels.")
@click.option("--sigma-reference-height", type=int, default=None,
              help="Scale sigma with image size: sigma * height / this (e.g. 1024 for Cityscapes).")  # fmt: skip
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images over this many pixels (read from the PNG header, before decoding).")  # fmt: skip
def command(input_dir: str, output_dir: str, beam_args: tuple[str, ...], splits: tuple[str, ...],
            unlabeled_splits: str, shards: int | None, weight_maps: bool, weight_scheme: str,
            weights_split: str | None, w0: float, sigma: float, sigma_reference_height: int | None,
            max_pixels: int) -> None:  # fmt: skip
    """Raw Cityscapes layout in INPUT -> sharded TFRecords, stats.json, class_weights.json and
    manifest.json in OUT, bad inputs in OUT/dead_letter.jsonl (Apache Beam).

    Beam options go after `--`, e.g.
    `segops prepare data prepared -- --direct_num_workers=2 --direct_running_mode=multi_processing`.
    """
    stray = [a for a in beam_args if not a.startswith("--")]
    if stray:
        raise click.UsageError(f"unexpected argument(s) {' '.join(stray)}; Beam options look like --runner=...")
    from segops.datasets.cityscapes import DiscoveryError
    from workflows.prepare import OptionsError, PrepareOptions, run_prepare, summarize

    _check_input(input_dir)
    try:
        options = PrepareOptions(
            input=os.path.abspath(input_dir) if _local(input_dir) else input_dir,
            output=os.path.abspath(output_dir) if _local(output_dir) else output_dir,
            splits=_names(splits),
            unlabeled_splits=_names((unlabeled_splits,)),
            shards=shards,
            weight_maps=weight_maps,
            weight_scheme=weight_scheme,
            weights_split=weights_split,
            w0=w0,
            sigma=sigma,
            sigma_reference_height=sigma_reference_height,
            max_pixels=max_pixels,
        )
    except OptionsError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        manifest = run_prepare(options, beam_args)
    except DiscoveryError as exc:
        raise click.ClickException(str(exc)) from exc
    except OptionsError as exc:  # options that only make sense against the listing (--weights-split)
        raise click.UsageError(str(exc)) from exc

    from apache_beam.io.filesystems import FileSystems

    from segops.core.fs import read_bytes

    stats = json.loads(read_bytes(FileSystems.join(output_dir, "stats.json")))
    class_weights = json.loads(read_bytes(FileSystems.join(output_dir, "class_weights.json")))
    click.echo(summarize(manifest, stats, class_weights))
