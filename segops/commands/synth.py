"""`segops synth OUT`: write the built-in synthetic street-scene dataset (Cityscapes layout). The
flags of SynthOptions' own fields are generated from them; the per-split counts and --size, which
fill its ``counts``, ``height`` and ``width``, are this command's."""

from __future__ import annotations

import os
import time

import click

from segops.commands.common import CONTEXT_SETTINGS, build_options, hw_callback
from segops.commands.flags import options_from
from segops.core.layout import TRAIN_EXTRA_SPLIT
from segops.datasets.synth import (
    CITIES,
    DEFAULT_COUNTS,
    DEFAULT_SIZE,
    MAX_PIXELS,
    MIN_SIDE,
    SynthOptions,
    generate_dataset,
)


@click.command(
    name="synth",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        "Example: segops synth data/synth && segops prepare data/synth prepared\n\n"
        f"Cities: train {', '.join(CITIES['train'])}; val {', '.join(CITIES['val'])}; "
        f"test {', '.join(CITIES['test'])}."
    ),
)
@click.argument("out", type=click.Path(file_okay=False, dir_okay=True, writable=True))
@click.option("--train", "n_train", type=click.IntRange(min=0), default=DEFAULT_COUNTS["train"], show_default=True,
              help="Number of train images.")
@click.option("--val", "n_val", type=click.IntRange(min=0), default=DEFAULT_COUNTS["val"], show_default=True,
              help="Number of val images.")
@click.option("--test", "n_test", type=click.IntRange(min=0), default=DEFAULT_COUNTS["test"], show_default=True,
              help="Number of test images (gtFine files carry only void ids, as in real Cityscapes).")
@click.option("--train-extra", "n_extra", type=click.IntRange(min=0), default=0, show_default=True,
              help="Number of train_extra images: gtCoarse labels only, no gtFine (implies --coarse).")
@click.option("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", show_default=True, metavar="HxW",
              callback=hw_callback(min_side=MIN_SIDE, max_pixels=MAX_PIXELS),
              help="Image size HEIGHTxWIDTH; real Cityscapes is 1024x2048.")
@options_from(SynthOptions)
@click.option("-q", "--quiet", is_flag=True, help="Print only the final summary line.")
def command(out: str, n_train: int, n_val: int, n_test: int, coarse: bool, n_extra: int, size: tuple[int, int],
            seed: int, workers: int, quiet: bool) -> None:
    """Generate the built-in synthetic street-scene dataset in the Cityscapes layout.

    Writes OUT/leftImg8bit/<split>/<city>/*_leftImg8bit.png and, under OUT/gtFine/, the
    *_gtFine_labelIds.png, *_gtFine_instanceIds.png, *_gtFine_color.png and
    *_gtFine_polygons.json files for every image, exactly as in a real Cityscapes download,
    so every segops stage (and cityscapesScripts) reads it as it reads the real dataset.
    --coarse adds OUT/gtCoarse/<split>/<city>/*_gtCoarse_{labelIds,instanceIds,color}.png and
    *_gtCoarse_polygons.json for train and val; --train-extra N adds N coarse-only images.
    The same options always write byte-identical files; files are written atomically.
    """
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if n_extra:
        counts[TRAIN_EXTRA_SPLIT] = n_extra
    options = build_options(SynthOptions.from_flat, counts=counts, height=size[0], width=size[1], seed=seed,
                            workers=workers, coarse=coarse or n_extra > 0)  # fmt: skip
    height, width = options.height, options.width
    last_shown: dict[str, int] = {}

    def progress(split: str, done: int, total: int) -> None:
        step = max(1, total // 10)
        if quiet or (done % step and done != total) or last_shown.get(split) == done:
            return
        last_shown[split] = done
        click.echo(f"  {split:5s} {done:5d}/{total}", err=True)

    if not quiet:
        click.echo(f"Generating {sum(counts.values())} images at {height}x{width} (seed {seed}) in {out}", err=True)
    start = time.perf_counter()
    try:
        summary = generate_dataset(out, options.counts, height=height, width=width, seed=options.seed,
                                   workers=options.workers, progress=progress, coarse=options.coarse)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {out}: {exc}") from exc
    elapsed = time.perf_counter() - start
    for split, n in summary["other_images"].items():
        if n > 0:
            click.echo(f"warning: {out} holds {n} more {split} image(s) from an earlier run with other options; "
                       "remove the directory for a dataset with exactly these counts", err=True)
    per_split = ", ".join(f"{s} {v['images']}" for s, v in summary["splits"].items())
    click.echo(
        f"synth: wrote {sum(v['images'] for v in summary['splits'].values())} images ({per_split}), "
        f"{summary['files_written']} files, {height}x{width}, seed {seed}, in {elapsed:.1f} s -> "
        f"{os.path.abspath(out)}"
    )
