"""Options of `segops infer`: :class:`InferOptions` (frozen, validated at construction) and
:class:`PredictOptions`, the part that decides how a model is applied to an image (tiling,
batching), which the report rebuilds from a run's manifest with :meth:`PredictOptions.from_record`
to reproduce the run's predictions."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

from segops.core import fs, layout
from segops.core.imageio import INFER_MAX_PIXELS
from segops.core.options import FLAG_PREFIX, FlatOptions, OptionsError, Text, flag, parse_hw
from segops.inference.crf import CRFParams

DEFAULT_TILE = "1024x2048"
TTA_NONE, TTA_FLIP = "none", "flip"
TTA_CHOICES = (TTA_NONE, TTA_FLIP)


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{uuid.uuid4().hex[:6]}"


def parse_tile(tile: str | int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """'HxW' (or (H, W)) -> (H, W); None, 0, '', '0' or (0, 0) -> None (whole images)."""
    if tile is None or tile in ("", "0", 0) or (not isinstance(tile, str | int) and tuple(tile) == (0, 0)):
        return None
    if isinstance(tile, str):
        try:
            return parse_hw(tile, "--tile")
        except OptionsError as exc:
            raise OptionsError(f"--tile must look like 1024x2048 (or 0 for whole images), got {tile!r}") from exc
    return int(tile[0]), int(tile[1])


# --tile: its text goes to PredictOptions as given (parse_tile reads it, "0" too)
TILE_TEXT = Text(str, lambda tile: f"{tile[0]}x{tile[1]}" if tile else "0")


@dataclass(frozen=True)
class PredictOptions:
    """How images go through the model: batching, tiling, threads."""

    batch_size: int = field(default=2, metadata=flag(
        "Images per RunInference batch (their probabilities are held together)."))
    max_batch_pixels: int = field(default=1 << 21, metadata=flag(
        "Pixels per model call (bounds activation memory; default one 1024x2048 frame)."))
    # sliding window for larger images; None = whole; the flag passes its text to parse_tile
    tile: tuple[int, int] | None = field(default=parse_tile(DEFAULT_TILE), metadata=flag(
        "Images larger than this (HxW) run as overlapping tiles; 0 = always whole images.", text=TILE_TEXT))
    tile_overlap: int = field(default=64, metadata=flag("Minimum overlap of neighbouring tiles, in pixels."))
    tf_threads: int = field(default=0, metadata=flag("TensorFlow intra-op threads per worker (0 = default)."))
    share_model_across_processes: bool = field(default=False, metadata=flag(
        "One model per machine instead of per worker process.", negatable=False))
    # Off by default: on CamVid's unseen sequence 0.5 adds +0.015 mIoU to the model's masks but
    # costs 0.006 after the CRF, which already removes most of the lean (docs/infer.md).
    prior_correction: float = field(default=0.0, metadata=flag(
        "Divide the probabilities by the class weights the model trained with (its model.json), to this power, "
        "before the CRF: takes back that share of weighted cross-entropy's lean towards rare classes on scenes "
        "unlike the training ones (0: off; models without recorded weights are left as they are).",
        low=0, high=1, metavar="ALPHA"))
    tta: str = field(default=TTA_NONE, metadata=flag(
        "Test-time augmentation: flip averages the probabilities of each image and its mirror image before the "
        "CRF (2x the model time).", choices=TTA_CHOICES))

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", parse_tile(self.tile))
        if self.tta not in TTA_CHOICES:
            raise OptionsError(f"--tta must be one of {', '.join(TTA_CHOICES)}, got {self.tta!r}")
        if self.batch_size < 1 or self.max_batch_pixels < 1:
            raise OptionsError("--batch-size and --max-batch-pixels must be >= 1")
        if self.tile is not None and (self.tile[0] < 1 or self.tile[1] < 1):
            raise OptionsError("--tile sides must be >= 1")
        if self.tile_overlap < 0:
            raise OptionsError("--tile-overlap must be >= 0")
        if not 0 <= self.prior_correction <= 1:
            raise OptionsError("--prior-correction must be in [0, 1]")

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> PredictOptions:
        """The options a run recorded in its manifest (``options.predict``, or the flat options
        of older manifests); what it did not record takes today's defaults."""
        record = record or {}
        record = record.get("predict", record)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


@dataclass(frozen=True)
class InferOptions(FlatOptions):
    """Options of ``segops infer``; paths are normalised (absolute, or URLs) at construction."""

    model_dir: str
    input: str
    output: str
    labels: str | None = field(default=None, metadata=flag(
        "Root of labelIds PNGs mirroring INPUT (default: the gtFine mirror of a Cityscapes leftImg8bit tree)."))
    split: str | None = field(default=None, metadata=flag("INPUT is a Cityscapes root: use INPUT/leftImg8bit/SPLIT."))
    crf: bool = field(default=True, metadata=flag("Dense-CRF refinement of the masks."))
    crf_params: CRFParams = field(default_factory=CRFParams, metadata={FLAG_PREFIX: "crf_"})  # --crf-iterations ...
    predict: PredictOptions = field(default_factory=PredictOptions)
    overwrite: bool = field(default=False, metadata=flag(
        "Reprocess images whose outputs already exist.", negatable=False))
    overlay: bool = field(default=False, metadata=flag("Also write an overlay JPEG per image.", negatable=False))
    max_pixels: int = field(default=INFER_MAX_PIXELS, metadata=flag("Refuse larger images (from the header)."))
    # the command's default is None, for a new id per run
    run_id: str = field(default_factory=new_run_id, metadata=flag(
        "Name of this run in the results table's history (default: UTC time + random)."))

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise OptionsError("--max-pixels must be >= 1")
        if not self.run_id or "/" in self.run_id or "=" in self.run_id:
            raise OptionsError("--run-id must be non-empty and contain neither '/' nor '='")
        object.__setattr__(self, "input", fs.normalise(self.input))
        object.__setattr__(self, "output", fs.normalise(self.output))
        if self.labels:
            object.__setattr__(self, "labels", fs.normalise(self.labels))

    @property
    def source(self) -> str:
        """Where the images are: INPUT, or INPUT/leftImg8bit/<split> with ``--split``."""
        return fs.join(self.input, layout.IMAGE_DIR, self.split) if self.split else self.input

    def to_record(self) -> dict[str, Any]:
        """The options as JSON-able data (for the manifest)."""
        return dataclasses.asdict(self)
