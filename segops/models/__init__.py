"""Segmentation networks (Keras 3, backend-neutral: keras.layers / keras.ops only) and their one
registry: name -> builder, stride, the hyper-parameters training passes to it, its help text and
the tiny hyper-parameters its conformance test builds. A new network is its builder's module and
one :data:`REGISTRY` entry; tests/test_model_conformance.py then checks it like every other.

Every model is a function of its hyper-parameters returning a ``keras.Model`` that maps float
images in 0..255 (N, H, W, 3) to per-class logits (N, H, W, num_classes) at input resolution;
normalisation happens inside the model. The export directory format (the train -> infer contract) is
:mod:`segops.models.export_dir`. Training, export and the CLI look models up here only
(:data:`REGISTRY`, :func:`build_model`, :func:`model_stride`). Models: the real-time street
networks Fast-SCNN and DDRNet-23-slim, U-Net, FCN-8s, SegNet and SegNet-Basic, DeepLabV3+; any of
them without a backbone also runs on an average-pooled input (``input_downsample``); U-Net, FCN-8s and DeepLabV3+ take a pretrained ``keras.applications``
encoder (:data:`BACKBONE_NAMES`), SegNet VGG16's. This module does not import Keras:
a builder's module is imported on the first build, so option checks and ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

UPSAMPLING_MODES = ("transpose", "bilinear")  # U-Net decoder: learned 2x2 transposed conv, or resize + 1x1 conv
FCN_STRIDE = 32  # five 2x2 poolings
NO_BACKBONE = "none"
# --backbone-weights: random, Keras' ImageNet download, or else the path of a weights file
NO_WEIGHTS = "none"
IMAGENET = "imagenet"
# keras.applications encoders (segops.models.backbones.ENCODERS has one entry per name)
BACKBONE_NAMES = ("vgg16", "resnet50", "mobilenetv2", "efficientnetb0")
OUTPUT_STRIDES = (8, 16)  # DeepLabV3+
BACKBONE_LAYER = "backbone"
REALTIME_STRIDE = 8  # DDRNet, Fast-SCNN: the head's resolution; their coarser branches join maps of any size


def unet_stride(depth: int = 4, backbone: str = NO_BACKBONE, **_: object) -> int:
    return 2**depth if backbone == NO_BACKBONE else FCN_STRIDE


def fcn8s_stride(**_: object) -> int:
    return FCN_STRIDE


def segnet_basic_stride(depth: int = 4, **_: object) -> int:
    return 2**depth


def deeplab_stride(output_stride: int = 16, **_: object) -> int:
    return output_stride


def realtime_stride(**_: object) -> int:
    return REALTIME_STRIDE


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: all a new network needs besides its builder's module.

    ``hparams``: the training options its builder takes, in the order model.json records them;
    ``stride_fn``: the multiple input sizes must be, from those hyper-parameters (the one place
    the stride is stated: builders whose code depends on it import it from here);
    ``stride_rule``: why, as an error message fragment formatted with the hyper-parameters
    (``--model``'s help and docs/train.md's table show both: :meth:`stride_text`);
    ``hparams_doc``: the hyper-parameters column of that table (:func:`models_markdown`);
    ``tiny``: the smallest hyper-parameters that build it, with which
    tests/test_model_conformance.py checks every entry; ``defaults``: the values of its
    hyper-parameters where the user gives none and they differ from training's general defaults
    (segops.training.options.ModelOptions resolves them); ``lr``, ``batch_size`` and ``loss``:
    likewise its default ``--lr``, ``--batch-size`` and ``--loss`` (segops.training.options.TrainOptions
    resolves them)."""

    name: str
    builder: str  # "module:function", imported on first use (it imports Keras)
    stride_fn: Callable[..., int]
    hparams: tuple[str, ...]
    hparams_doc: str
    stride_rule: str = "its stride"
    backbones: tuple[str, ...] = ()  # pretrained encoders it can use (besides "none")
    tiny: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    lr: float | None = None  # its default --lr where it differs from training's general one
    batch_size: int | None = None  # its default --batch-size where it differs from training's general one
    loss: str | None = None  # its default --loss where it differs from training's general one

    def __post_init__(self) -> None:
        for kind, given in (("tiny", self.tiny), ("default", self.defaults)):
            if unknown := set(given) - set(self.hparams):
                raise ValueError(f"model {self.name}: {kind} hyper-parameters {sorted(unknown)} are not among its hparams")

    def stride_text(self) -> str:
        """The stride at the stride function's defaults, and why: ``16 (2**depth with --depth 4, ...)``."""
        defaults = {name: p.default for name, p in inspect.signature(self.stride_fn).parameters.items()
                    if p.default is not inspect.Parameter.empty}  # fmt: skip
        rule = self.stride_rule.format(**defaults)
        return f"{self.stride()}" + ("" if rule == ModelSpec.stride_rule else f" ({rule})")

    def build(self, input_downsample: int = 1, **hparams: Any) -> Any:
        """The model; ``input_downsample`` > 1 wraps it to run on images average-pooled by that
        factor and to return its logits upsampled back (:func:`segops.models.blocks.downsampled`)."""
        module, _, function = self.builder.partition(":")
        model = getattr(importlib.import_module(module), function)(**hparams)
        if input_downsample == 1:
            return model
        from segops.models.blocks import downsampled

        return downsampled(model, input_downsample)

    def stride(self, input_downsample: int = 1, **hparams: Any) -> int:
        """Input height and width must be multiples of this."""
        return self.stride_fn(**hparams) * input_downsample


_COMMON_HPARAMS = ("base_filters", "dropout", "dilated")
_BACKBONE_HPARAMS = ("backbone", "backbone_weights")
_ENCODERS = ", ".join(BACKBONE_NAMES)

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("unet", "segops.models.unet:build_unet", unet_stride,
                  (*_COMMON_HPARAMS, "depth", "upsampling", *_BACKBONE_HPARAMS),
                  "depth, base_filters (x2 per level), upsampling `transpose` / `bilinear`, dropout, dilated",
                  stride_rule="2**depth with --depth {depth}, 32 with a backbone", backbones=BACKBONE_NAMES,
                  tiny={"depth": 2, "base_filters": 4}),
        ModelSpec("fcn8s", "segops.models.fcn:build_fcn8s", fcn8s_stride, (*_COMMON_HPARAMS, *_BACKBONE_HPARAMS),
                  "base_filters (VGG widths x base/64), fc_filters (16 x base), dropout, dilated",
                  backbones=BACKBONE_NAMES, tiny={"base_filters": 2}),
        ModelSpec("segnet", "segops.models.segnet:build_segnet", fcn8s_stride,
                  ("base_filters", "dropout", *_BACKBONE_HPARAMS), "base_filters (VGG16 widths x base/64), dropout",
                  stride_rule="five poolings", backbones=("vgg16",), tiny={"base_filters": 2}),
        ModelSpec("segnet_basic", "segops.models.segnet:build_segnet_basic", segnet_basic_stride,
                  ("base_filters", "dropout", "depth"), "depth (4 in the paper), base_filters (64 in the paper), dropout",
                  stride_rule="2**depth with --depth {depth}", tiny={"depth": 2, "base_filters": 4}),
        ModelSpec("deeplabv3plus", "segops.models.deeplab:build_deeplabv3plus", deeplab_stride,
                  ("base_filters", "dropout", "output_stride", *_BACKBONE_HPARAMS, "separable"),
                  "output_stride (8 or 16), base_filters (ASPP/decoder width 8 x base), dropout, separable",
                  stride_rule="--output-stride {output_stride}", backbones=BACKBONE_NAMES,
                  tiny={"base_filters": 2, "output_stride": 8, "backbone": NO_BACKBONE},
                  # the default network: ImageNet's MobileNetV2 (docs/train.md, "Recipe on unseen scenes")
                  defaults={"backbone": "mobilenetv2", "backbone_weights": IMAGENET, "base_filters": 16,
                            "separable": True}, lr=5e-4, batch_size=2, loss="ce+dice"),
        ModelSpec("ddrnet23_slim", "segops.models.ddrnet:build_ddrnet", realtime_stride, ("base_filters", "dropout"),
                  "base_filters (the paper's planes: 32 slim, 64 DDRNet-23), dropout",
                  stride_rule="its 1/8 head; the 1/64 branch joins at any size", tiny={"base_filters": 4}),
        ModelSpec("fast_scnn", "segops.models.fast_scnn:build_fast_scnn", realtime_stride, ("base_filters", "dropout"),
                  "base_filters (widths x base/32; 32 is the paper's), dropout",
                  stride_rule="its 1/8 fusion; the 1/32 branch joins at any size", tiny={"base_filters": 4}),
    )
}  # fmt: skip
MODEL_NAMES = tuple(REGISTRY)


def strides_text() -> str:
    """Every registered model with its stride at its stride function's defaults and why (``--model``'s
    help, so a new registry entry shows there), e.g. ``unet 16 (2**depth with --depth 4, 32 with a backbone)``."""
    return "; ".join(f"{spec.name} {spec.stride_text()}" for spec in REGISTRY.values())


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return REGISTRY[name]


def build_model(name: str, **hparams: Any) -> Any:
    """Build model ``name`` (a :data:`MODEL_NAMES` entry) with the builder's keyword hyper-parameters.

    The model takes float images in 0..255 (N, H, W, 3), H and W multiples of
    :func:`model_stride`, and returns per-class logits at input resolution. ``input_downsample``
    (> 1) runs it on average-pooled images (:meth:`ModelSpec.build`). Imports Keras and the
    builder's module on first use, so the example is not run by the tests.

    Example:
        >>> import numpy as np  # doctest: +SKIP
        >>> from segops.models import build_model, model_stride  # doctest: +SKIP
        >>> model = build_model("unet", depth=3, base_filters=16)  # doctest: +SKIP
        >>> model_stride("unet", depth=3)  # doctest: +SKIP
        8
        >>> model.predict(np.zeros((1, 64, 128, 3), "float32"), verbose=0).shape  # doctest: +SKIP
        (1, 64, 128, 19)
    """
    return get_spec(name).build(**hparams)


def model_stride(name: str, **hparams: Any) -> int:
    """Input height and width must be multiples of this (e.g. 2**depth for U-Net, 32 for FCN-8s)."""
    return get_spec(name).stride(**hparams)


def encoder_layers(model: Any) -> list[Any]:
    """The layers of ``model`` that hold pretrained encoder weights (what
    ``--freeze-backbone-epochs`` freezes): the nested backbone, or SegNet's VGG16 convs."""
    return [
        layer for layer in model.layers
        if layer.name == BACKBONE_LAYER or re.fullmatch(r"block\d_conv\d(_bn)?", layer.name)
    ]  # fmt: skip


def models_markdown() -> str:
    """docs/train.md's table of networks, one row per :data:`REGISTRY` entry (a test keeps the two
    equal: after adding an entry, paste this function's output there)."""
    lines = ["| model | H, W multiple of (`stride`) | hyper-parameters | `--backbone` |", "| --- | --- | --- | --- |"]
    for spec in REGISTRY.values():
        backbones = ", ".join((NO_BACKBONE, *spec.backbones))
        stride = re.sub(r"(--[a-z-]+(?: \d+)?)", r"`\1`", spec.stride_text())  # flags as code, as the docs write them
        lines.append(f"| `{spec.name}` | {stride} | {spec.hparams_doc} | {backbones} |")
    return "\n".join(lines) + "\n"
