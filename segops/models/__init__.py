"""Segmentation networks (Keras 3, backend-neutral: keras.layers / keras.ops only) and their one
registry: name -> builder, stride, the hyper-parameters training passes to it.

Every model is a function of its hyper-parameters returning a ``keras.Model`` that maps float
images in 0..255 (N, H, W, 3) to per-class logits (N, H, W, num_classes) at input resolution;
normalisation happens inside the model. Training, export and the CLI look models up here only
(:data:`REGISTRY`, :func:`build_model`, :func:`model_stride`). This module does not import Keras:
a builder's module is imported on the first build, so option checks and ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

UPSAMPLING_MODES = ("transpose", "bilinear")  # U-Net decoder: learned 2x2 transposed conv, or resize + 1x1 conv
FCN_STRIDE = 32  # five 2x2 poolings


def unet_stride(depth: int = 4, **_: object) -> int:
    return 2**depth


def fcn8s_stride(**_: object) -> int:
    return FCN_STRIDE


@dataclass(frozen=True)
class ModelSpec:
    """One architecture. ``hparams``: the training options its builder takes, in the order
    model.json records them; ``stride_rule``: why inputs must be multiples of the stride (an
    error message fragment, formatted with the hyper-parameters)."""

    name: str
    builder: str  # "module:function", imported on first use (it imports Keras)
    stride_fn: Callable[..., int]
    hparams: tuple[str, ...]
    stride_rule: str = "its stride"

    def build(self, **hparams: Any) -> Any:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)(**hparams)

    def stride(self, **hparams: Any) -> int:
        """Input height and width must be multiples of this."""
        return self.stride_fn(**hparams)


_COMMON_HPARAMS = ("base_filters", "dropout", "dilated")

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("unet", "segops.models.unet:build_unet", unet_stride, (*_COMMON_HPARAMS, "depth", "upsampling"),
                  stride_rule="2**depth with --depth {depth}"),  # fmt: skip
        ModelSpec("fcn8s", "segops.models.fcn:build_fcn8s", fcn8s_stride, _COMMON_HPARAMS),
    )
}
MODEL_NAMES = tuple(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return REGISTRY[name]


def build_model(name: str, **hparams: Any) -> Any:
    """Build model ``name`` ("unet" or "fcn8s") with the builder's keyword hyper-parameters."""
    return get_spec(name).build(**hparams)


def model_stride(name: str, **hparams: Any) -> int:
    """Input height and width must be multiples of this (2**depth for U-Net, 32 for FCN-8s)."""
    return get_spec(name).stride(**hparams)
