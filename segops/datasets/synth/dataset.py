"""The dataset around the images: splits, cities and counts, frame naming, each image's random
generator (from seed, split and index only), writing an image's five files (and, with coarse
annotations, its four gtCoarse files) atomically, the options a dataset is made with,
:func:`generate_dataset` and the synth manifest."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from segops import __version__
from segops.core import layout
from segops.core.fs import dump_json, join, match_sized, write_bytes_atomic
from segops.core.imageio import encode_mask_png, encode_png
from segops.core.labels import LABEL_ID_TO_COLOR
from segops.core.options import NOT_ON_CLI, FlatOptions, OptionsError, flag
from segops.datasets.synth.coarse import coarsen
from segops.datasets.synth.compose import build_scene
from segops.datasets.synth.render import Rendered, render

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: With coarse annotations: the splits that get gtCoarse files (as in the real download: no test)
#: and the coarse-only split (images and gtCoarse, no gtFine).
COARSE_SPLITS: tuple[str, ...] = ("train", "val", layout.TRAIN_EXTRA_SPLIT)
COARSE_ONLY_SPLITS: tuple[str, ...] = (layout.TRAIN_EXTRA_SPLIT,)
#: Real Cityscapes city names, different per split as in the real dataset.
CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum", "bremen"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld"),
    layout.TRAIN_EXTRA_SPLIT: ("augsburg", "bamberg", "dortmund"),
}
#: Demo-sized defaults. 48 train images at 256x512 are ~6.3 M labelled pixels, enough for a small
#: U-Net to start separating the large classes in a few CPU epochs, and each of the 10 rarest
#: classes is guaranteed in ~10 of them. 12 val images (4 per city) give a usable
#: confusion-matrix mIoU; 6 test images exercise unlabeled inference. Generating all 66 takes
#: ~4 s on one core, and the demo's cost stays in training, not in data.
DEFAULT_COUNTS: dict[str, int] = {"train": 48, "val": 12, "test": 6}
DEFAULT_SIZE = (256, 512)  # (height, width); real Cityscapes is 1024x2048
MIN_SIDE = 32  # the street layout needs a few pixels per object
MAX_SIDE = 4096  # images hold at most MAX_SIDE * MAX_SIDE pixels (any aspect ratio)
MAX_PIXELS = MAX_SIDE * MAX_SIDE
FRAME = 19  # gtFine annotates the 20th frame of each 30-frame snippet: always *_000019_*
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2, layout.TRAIN_EXTRA_SPLIT: 3}
#: The only labels the test split's gtFine files carry (as in the real test set).
TEST_VOID_LABELS = frozenset({"ego vehicle", "rectification border", "out of roi"})
#: Classes guaranteed by image index (two per labelled image), rarest first.
GUARANTEED = ("rider", "truck", "bus", "train", "motorcycle", "bicycle", "wall", "fence", "terrain",
              "traffic light")


def _check_counts(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` in split order; OptionsError for an unknown split or a bad count."""
    counts = dict(counts)
    known = (*SPLITS, *COARSE_ONLY_SPLITS)
    unknown = set(counts) - set(known)
    if unknown:
        raise OptionsError(f"unknown split(s) {sorted(unknown)}; expected some of {list(known)}")
    for split, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise OptionsError(f"count for split {split!r} must be a non-negative integer, got {n!r}")
    return {s: counts[s] for s in known if s in counts}


@dataclass(frozen=True)
class SynthOptions(FlatOptions):
    """What a synthetic dataset is made with; the manifest records all of it but ``workers``,
    which never changes a byte of the output."""

    # split -> images, and the size: the command's per-split counts (--train, ...) and --size HxW
    counts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_COUNTS), metadata=NOT_ON_CLI)
    height: int = field(default=DEFAULT_SIZE[0], metadata=NOT_ON_CLI)
    width: int = field(default=DEFAULT_SIZE[1], metadata=NOT_ON_CLI)
    seed: int = field(default=0, metadata=flag("Random seed; each image depends only on (seed, split, index)."))
    workers: int = field(default=1, metadata=flag("Processes generating images in parallel.", low=1))
    # also write gtCoarse/ for train, val (and train_extra)
    coarse: bool = field(default=False, metadata=flag(
        "Also write gtCoarse/ (coarse polygons, more void) for train and val, as Cityscapes ships."))

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", _check_counts(self.counts))
        extra = [s for s in COARSE_ONLY_SPLITS if self.counts.get(s)]
        if extra and not self.coarse:
            raise OptionsError(f"split(s) {', '.join(extra)} hold coarse annotations only: ask for coarse ones too")
        if self.height < MIN_SIDE or self.width < MIN_SIDE:
            raise OptionsError(f"image size {self.height}x{self.width} is too small; "
                               f"use at least {MIN_SIDE}x{MIN_SIDE}")
        if self.height * self.width > MAX_PIXELS:
            raise OptionsError(f"image size {self.height}x{self.width} is too large "
                               f"(over {MAX_SIDE}*{MAX_SIDE} pixels)")
        if self.workers < 1:
            raise OptionsError(f"workers must be >= 1, got {self.workers}")


def frame_stem(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of image ``index`` of ``split``: cities take turns, seq counts per city."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{FRAME:06d}"


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """An image's generator depends only on (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))


def generate_image(split: str, index: int, height: int = SynthOptions.height, width: int = SynthOptions.width,
                   seed: int = SynthOptions.seed) -> Rendered:
    """Image ``index`` of ``split``: its scene (with two guaranteed rare classes unless it is a
    test image), rendered; test images keep only the void labels."""
    rng = image_rng(seed, split, index)
    guaranteed: frozenset[str] = frozenset()
    if split != "test":
        n = len(GUARANTEED)
        guaranteed = frozenset({GUARANTEED[(2 * index) % n], GUARANTEED[(2 * index + 1) % n]})
    items = build_scene(rng, height, width, guaranteed)
    keep = (lambda name: name in TEST_VOID_LABELS) if split == "test" else None
    return render(items, height, width, rng, keep)


def _write_one(args: tuple[str, str, int, int, int, int, bool]) -> tuple[str, int, int]:
    """Generate one image and write its files (five; four more with coarse annotations, only
    those and the image in a coarse-only split); (split, index, files written)."""
    out_dir, split, index, height, width, seed, coarse = args
    r = generate_image(split, index, height, width, seed)
    city, stem = frame_stem(split, index)
    img_dir = join(out_dir, layout.IMAGE_DIR, split, city)
    files = {join(img_dir, stem + layout.IMAGE_SUFFIX): encode_png(r.image)}
    if split not in COARSE_ONLY_SPLITS:
        gt_dir = join(out_dir, layout.LABEL_DIR, split, city)
        files.update({
            join(gt_dir, stem + layout.LABEL_SUFFIX): encode_mask_png(r.label_ids),
            join(gt_dir, stem + layout.INSTANCE_SUFFIX): encode_png(r.instance_ids),
            join(gt_dir, stem + layout.COLOR_SUFFIX): encode_png(LABEL_ID_TO_COLOR[r.label_ids]),
            join(gt_dir, stem + layout.POLYGONS_SUFFIX): dump_json(r.polygons, indent="\t", newline=False),
        })  # fmt: skip
    if coarse and split in COARSE_SPLITS:
        label_ids, doc = coarsen(r.label_ids)
        cg_dir = join(out_dir, layout.COARSE_LABEL_DIR, split, city)
        # gtCoarse has no instances: its instanceIds carry the labelIds (no id >= 1000)
        files.update({
            join(cg_dir, stem + layout.COARSE_LABEL_SUFFIX): encode_mask_png(label_ids),
            join(cg_dir, stem + layout.COARSE_INSTANCE_SUFFIX): encode_png(label_ids.astype(np.uint16)),
            join(cg_dir, stem + layout.COARSE_COLOR_SUFFIX): encode_png(LABEL_ID_TO_COLOR[label_ids]),
            join(cg_dir, stem + layout.COARSE_POLYGONS_SUFFIX): dump_json(doc, indent="\t", newline=False),
        })  # fmt: skip
    for path, data in files.items():
        write_bytes_atomic(path, data)
    return split, index, len(files)


def generate_dataset(out_dir: str, counts: dict[str, int] | None = None, height: int = SynthOptions.height,
                     width: int = SynthOptions.width, seed: int = SynthOptions.seed,
                     workers: int = SynthOptions.workers,
                     progress: Callable[[str, int, int], None] | None = None,
                     coarse: bool = SynthOptions.coarse) -> dict:
    """Write the synthetic dataset under ``out_dir`` in the Cityscapes layout.

    ``counts`` maps split -> number of images (default :data:`DEFAULT_COUNTS`). ``progress`` is
    called as ``progress(split, done_in_split, total_in_split)`` after each image. ``coarse``
    adds gtCoarse/ files (:mod:`.coarse`) for train and val, and allows a ``train_extra`` count
    (images with gtCoarse only, as Cityscapes' train_extra). Returns a
    summary: per split the images and files written, the cities, and the total; and in
    ``other_images`` per split the images already there that this run did not write (left by an
    earlier run with larger counts: they are never deleted). Bad options raise
    :class:`~segops.core.options.OptionsError` (a ValueError) before anything is written.
    """
    opts = SynthOptions(DEFAULT_COUNTS if counts is None else counts, height, width, seed, workers, coarse)
    counts = opts.counts
    tasks = [(out_dir, s, i, height, width, seed, coarse) for s, n in counts.items() for i in range(n)]
    done = dict.fromkeys(counts, 0)
    files = dict.fromkeys(counts, 0)

    def record(result: tuple[str, int, int]) -> None:
        split, _, nfiles = result
        done[split] += 1
        files[split] += nfiles
        if progress is not None:
            progress(split, done[split], counts[split])

    if workers == 1 or len(tasks) <= 1:
        for t in tasks:
            record(_write_one(t))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_write_one, tasks, chunksize=max(1, len(tasks) // (8 * workers))):
                record(result)
    summary = {
        "generator": "segops.datasets.synth",
        "segops_version": __version__,
        # "coarse" only when asked for: the manifest of a fine-only dataset is what it always was
        "options": {"counts": counts, "height": height, "width": width, "seed": seed, **({"coarse": True} if coarse else {})},
        "splits": {s: {"images": done[s], "files": files[s],
                       "cities": sorted({frame_stem(s, i)[0] for i in range(done[s])})}
                   for s in counts},
    }
    summary["files_written"] = sum(files.values()) + 1
    write_bytes_atomic(join(out_dir, layout.SYNTH_MANIFEST_FILE), dump_json(summary))
    # not in the manifest (it depends on what was there before): images this run did not write
    summary["other_images"] = {s: _count_images(out_dir, s) - done[s] for s in counts}
    summary["out_dir"] = out_dir
    return summary


def _count_images(out_dir: str, split: str) -> int:
    return len(match_sized(join(out_dir, layout.IMAGE_DIR, split, "*", "*" + layout.IMAGE_SUFFIX)))
