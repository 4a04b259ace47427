"""What `segops prepare` is asked to do: :class:`PrepareOptions` (frozen, validated at
construction) and the choices made from them against the listed parts (shards per split, the
split the class weights come from); the pipeline makes them on a worker, from counts it took."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from segops.core.imageio import DEFAULT_MAX_PIXELS
from segops.core.label_sets import DEFAULT_LABEL_SET, LabelSet, LabelSetError, load_label_set
from segops.core.layout import COARSE, FINE
from segops.core.options import NAMES_TEXT, FlatOptions, OptionsError, flag
from segops.datasets.cityscapes import DEFAULT_UNLABELED_SPLITS
from segops.prepare.class_weights import DEFAULT_SCHEME, SCHEMES

#: Automatic sharding aims at about this many input image bytes per shard (TFRecord guidance:
#: shards of 100-200 MB read well in parallel and are few enough to list quickly).
SHARD_TARGET_BYTES = 128 * 1024 * 1024
MAX_SHARDS = 99999  # five digits in the shard names
ANNOTATION_CHOICES = (FINE, COARSE, f"{FINE}+{COARSE}")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PrepareOptions(FlatOptions):
    """Everything `segops prepare` does, validated once here (OptionsError with a readable message)."""

    input: str
    output: str
    splits: tuple[str, ...] = field(default=(), metadata=flag(  # empty: every usable split found
        "Splits to prepare, comma-separated (default: all usable ones found).", multiple=True, text=NAMES_TEXT))
    unlabeled_splits: tuple[str, ...] = field(default=DEFAULT_UNLABELED_SPLITS, metadata=flag(
        "Splits without usable labels: written image-only (all-ignore label), left out of statistics. '' to "
        "treat every split as labelled.", text=NAMES_TEXT))
    # per split; None: one per SHARD_TARGET_BYTES of input images
    shards: int | None = field(default=None, metadata=flag(
        "Shards per split (default: one per ~128 MiB of input images).", low=1, high=MAX_SHARDS))
    weight_maps: bool = field(default=True, metadata=flag(
        "Write U-Net per-pixel weight maps (class weight + border term)."))
    weight_scheme: str = field(default=DEFAULT_SCHEME, metadata=flag(
        "Class-weight scheme used in the weight maps (all are written to class_weights.json).", choices=SCHEMES))
    # None: train if prepared, else the first labelled split
    weights_split: str | None = field(default=None, metadata=flag(
        "Split the class weights come from (default: train)."))
    w0: float = field(default=10.0, metadata=flag("U-Net border weight w0."))
    sigma: float = field(default=5.0, metadata=flag("U-Net border sigma, in pixels."))
    # scale sigma by height / this; None: pixels as given
    sigma_reference_height: int | None = field(default=None, metadata=flag(
        "Scale sigma with image size: sigma * height / this (e.g. 1024 for Cityscapes)."))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=flag(
        "Refuse images over this many pixels (read from the PNG header, before decoding).", low=1))
    # which of gtFine/, gtCoarse/ to write
    annotations: str = field(default=FINE, metadata=flag(
        "Labels to write: gtFine/ (fine), gtCoarse/ (coarse, to OUT/coarse/<split>/) or both; with coarse, each "
        "record says its kind (label/annotation).", choices=ANNOTATION_CHOICES))
    # the taxonomy of the labelIds: a built-in's name or a label-set file
    label_set: str = field(default=DEFAULT_LABEL_SET, metadata=flag(
        "Taxonomy of the labelIds PNGs: a built-in (cityscapes, camvid11, ade20k150) or a label-set JSON file "
        "(docs/labels.md); recorded in the manifest for train and infer."))

    def __post_init__(self) -> None:
        if not self.input:
            raise OptionsError("input directory is required")
        if not self.output:
            raise OptionsError("output directory is required")
        for name in (*self.splits, *self.unlabeled_splits):
            if not _SPLIT_NAME.match(name):
                raise OptionsError(f"invalid split name {name!r}")
        if self.shards is not None and not 1 <= self.shards <= MAX_SHARDS:
            raise OptionsError(f"--shards must be between 1 and {MAX_SHARDS}, got {self.shards}")
        if self.weight_scheme not in SCHEMES:
            raise OptionsError(f"--weight-scheme must be one of {', '.join(SCHEMES)}, got {self.weight_scheme!r}")
        if self.weights_split is not None and self.weights_split in self.unlabeled_splits:
            raise OptionsError(f"--weights-split {self.weights_split} is an unlabeled split")
        if not (math.isfinite(self.w0) and self.w0 >= 0):
            raise OptionsError(f"--w0 must be a finite number >= 0, got {self.w0}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise OptionsError(f"--sigma must be > 0, got {self.sigma}")
        if self.sigma_reference_height is not None and self.sigma_reference_height <= 0:
            raise OptionsError("--sigma-reference-height must be > 0")
        if self.max_pixels <= 0:
            raise OptionsError("--max-pixels must be > 0")
        if self.annotations not in ANNOTATION_CHOICES:
            raise OptionsError(f"--annotations must be one of {', '.join(ANNOTATION_CHOICES)}, got {self.annotations!r}")
        try:
            self.labels  # noqa: B018 - read (and cached) once here, so a bad file fails before any work
        except LabelSetError as exc:
            raise OptionsError(f"--label-set: {exc}") from exc

    @functools.cached_property
    def labels(self) -> LabelSet:
        """The label set the labelIds are read in (travels to the workers with the options)."""
        return load_label_set(self.label_set)

    @property
    def annotation_kinds(self) -> tuple[str, ...]:
        """The kinds asked for, e.g. ("fine", "coarse")."""
        return tuple(self.annotations.split("+"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["splits"], d["unlabeled_splits"] = list(self.splits), list(self.unlabeled_splits)
        return d


def auto_shards(n_images: int, image_bytes: int) -> int:
    """Shards for a split of ``n_images`` images of ``image_bytes`` bytes in all."""
    return max(1, min(n_images, math.ceil(image_bytes / SHARD_TARGET_BYTES)))


def shard_counts(options: PrepareOptions, splits: list[str], sizes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Part (split, or coarse/<split>) -> number of shards: ``--shards``, else :func:`auto_shards`
    of the part's (pairs, image bytes) in ``sizes`` (a part without pairs: none)."""
    return {s: options.shards or auto_shards(*sizes.get(s, (0, 0))) for s in splits}


def resolve_weights_split(options: PrepareOptions, splits: list[str], unlabeled: list[str] | tuple[str, ...]) -> str | None:
    """The split the class weights come from: ``--weights-split``, else train, else the first
    labelled split (None when nothing labelled is prepared); OptionsError when the one asked for
    is not a labelled split among ``splits`` (the parts written). Parts count as splits: fine
    train is first; a coarse-only run takes its weights from coarse/train."""
    labelled = [s for s in splits if s not in unlabeled]
    if options.weights_split is not None:
        if options.weights_split not in labelled:
            raise OptionsError(
                f"--weights-split {options.weights_split} is not among the labelled splits being "
                f"prepared ({', '.join(labelled) or 'none'})"
            )
        return options.weights_split
    if "train" in labelled:
        return "train"
    return labelled[0] if labelled else None
