"""`segops prepare INPUT OUT [options] [-- beam options]`: flags -> PrepareOptions, run the
pipeline (workflows.prepare), print the summary. Defaults and choices come from PrepareOptions."""

from __future__ import annotations

import os

import click

from segops.commands.common import CONTEXT_SETTINGS, build_options, check_beam_args, output_errors
from segops.core.fs import has_scheme, normalise
from segops.core.options import OptionsError, default_of
from segops.prepare.class_weights import SCHEMES
from segops.prepare.options import ANNOTATION_CHOICES, MAX_SHARDS, PrepareOptions


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    """--splits train,val and --splits train --splits val both work."""
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


def _check_input(path: str) -> None:
    # An object store has no directories: its bucket and credentials are checked (one line, exit
    # 2); an empty listing there fails later with its own message.
    if has_scheme(path):
        from segops.core import storage

        storage.check_access(path, write=False)
    elif not os.path.isdir(path):
        raise click.UsageError(f"input directory {path!r} does not exist")


def _default(name: str):
    return default_of(PrepareOptions, name)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("input_dir", metavar="INPUT")
@click.argument("output_dir", metavar="OUT")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_OPTIONS...]")
@click.option("--splits", multiple=True, help="Splits to prepare, comma-separated (default: all usable ones found).")
@click.option("--unlabeled-splits", default=",".join(_default("unlabeled_splits")), show_default=True,
              help="Splits without usable labels: written image-only (all-ignore label), left out of statistics. "
                   "'' to treat every split as labelled.")  # fmt: skip
@click.option("--shards", type=click.IntRange(1, MAX_SHARDS), default=_default("shards"),
              help="Shards per split (default: one per ~128 MiB of input images).")  # fmt: skip
@click.option("--weight-maps/--no-weight-maps", default=_default("weight_maps"), show_default=True,
              help="Write U-Net per-pixel weight maps (class weight + border term).")  # fmt: skip
@click.option("--weight-scheme", type=click.Choice(SCHEMES), default=_default("weight_scheme"), show_default=True,
              help="Class-weight scheme used in the weight maps (all are written to class_weights.json).")  # fmt: skip
@click.option("--weights-split", default=_default("weights_split"),
              help="Split the class weights come from (default: train).")
@click.option("--w0", type=float, default=_default("w0"), show_default=True, help="U-Net border weight w0.")
@click.option("--sigma", type=float, default=_default("sigma"), show_default=True,
              help="U-Net border sigma, in pixels.")
@click.option("--sigma-reference-height", type=int, default=_default("sigma_reference_height"),
              help="Scale sigma with image size: sigma * height / this (e.g. 1024 for Cityscapes).")  # fmt: skip
@click.option("--annotations", type=click.Choice(ANNOTATION_CHOICES), default=_default("annotations"),
              show_default=True,
              help="Labels to write: gtFine/ (fine), gtCoarse/ (coarse, to OUT/coarse/<split>/) or both; "
                   "with coarse, each record says its kind (label/annotation).")  # fmt: skip
@click.option("--max-pixels", type=click.IntRange(1), default=_default("max_pixels"), show_default=True,
              help="Refuse images over this many pixels (read from the PNG header, before decoding).")  # fmt: skip
@click.option("--label-set", default=_default("label_set"), show_default=True,
              help="Taxonomy of the labelIds PNGs: a built-in (cityscapes, camvid11, ade20k150) or a "
                   "label-set JSON file (docs/labels.md); recorded in the manifest for train and infer.")  # fmt: skip
def command(input_dir: str, output_dir: str, beam_args: tuple[str, ...], splits: tuple[str, ...],
            unlabeled_splits: str, shards: int | None, weight_maps: bool, weight_scheme: str,
            weights_split: str | None, w0: float, sigma: float, sigma_reference_height: int | None,
            max_pixels: int, annotations: str, label_set: str) -> None:  # fmt: skip
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
    options = build_options(
        PrepareOptions.from_flat,
        input=normalise(input_dir),
        output=normalise(output_dir),
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
        annotations=annotations,
        label_set=label_set,
    )
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
