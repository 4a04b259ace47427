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
from segops.core.options import FLAG_PREFIX, FlatOptions, OptionsError, parse_hw
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


@dataclass(frozen=True)
class PredictOptions:
    """How images go through the model: batching, tiling, threads."""

    batch_size: int = 2  # images per RunInference batch (same-size images share a model call)
    max_batch_pixels: int = 1 << 21  # pixels per model call (bounds activation memory): one 1024x2048 frame
    tile: tuple[int, int] | None = parse_tile(DEFAULT_TILE)  # sliding window for larger images; None = whole
    tile_overlap: int = 64
    tf_threads: int = 0  # intra-op threads per worker; 0 = TensorFlow's default
    share_model_across_processes: bool = False
    tta: str = TTA_NONE  # test-time augmentation: none | flip (probabilities of image and mirror averaged)

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
    labels: str | None = None  # root of labelIds mirroring the input; default: the gtFine mirror
    split: str | None = None  # INPUT is a Cityscapes root; use INPUT/leftImg8bit/<split>
    crf: bool = True
    crf_params: CRFParams = field(default_factory=CRFParams, metadata={FLAG_PREFIX: "crf_"})  # --crf-iterations ...
    predict: PredictOptions = field(default_factory=PredictOptions)
    overwrite: bool = False
    overlay: bool = False
    max_pixels: int = INFER_MAX_PIXELS
    run_id: str = field(default_factory=new_run_id)

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
