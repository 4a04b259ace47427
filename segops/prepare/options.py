"""What `segops prepare` is asked to do: :class:`PrepareOptions` (frozen, validated at
construction) and the choices made from them against the listed parts (shards per split, the
split the class weights come from); the pipeline makes them on a worker, from counts it took."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from segops.core.imageio import DEFAULT_MAX_PIXELS
from segops.core.label_sets import DEFAULT_LABEL_SET, LabelSet, LabelSetError, load_label_set
from segops.core.layout import COARSE, FINE
from segops.core.options import FlatOptions, OptionsError
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
    splits: tuple[str, ...] = ()  # empty: every usable split found
    unlabeled_splits: tuple[str, ...] = DEFAULT_UNLABELED_SPLITS
    shards: int | None = None  # per split; None: one per SHARD_TARGET_BYTES of input images
    weight_maps: bool = True
    weight_scheme: str = DEFAULT_SCHEME
    weights_split: str | None = None  # None: train if prepared, else the first labelled split
    w0: float = 10.0
    sigma: float = 5.0
    sigma_reference_height: int | None = None  # scale sigma by height / this; None: pixels as given
    max_pixels: int = DEFAULT_MAX_PIXELS
    annotations: str = FINE  # fine | coarse | fine+coarse: which of gtFine/, gtCoarse/ to write
    label_set: str = DEFAULT_LABEL_SET  # the taxonomy of the labelIds: a built-in's name or a label-set file

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
