"""Segmentation networks (Keras 3, backend-neutral: keras.layers / keras.ops only).

Every model is a function of its hyper-parameters returning a ``keras.Model`` that maps float
images in 0..255 (N, H, W, 3) to per-class logits (N, H, W, num_classes) at input resolution;
normalisation happens inside the model. :func:`build_model` is the registry used by training
and the CLI; :func:`model_stride` says what H and W must be multiples of.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MODEL_NAMES = ("unet", "fcn8s")


def _registry() -> dict[str, tuple[Callable[..., Any], Callable[..., int]]]:
    from segops.models.fcn import build_fcn8s, fcn8s_stride
    from segops.models.unet import build_unet, unet_stride

    return {"unet": (build_unet, unet_stride), "fcn8s": (build_fcn8s, fcn8s_stride)}


def _lookup(name: str) -> tuple[Callable[..., Any], Callable[..., int]]:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return registry[name]


def build_model(name: str, **hparams: Any) -> Any:
    """Build model ``name`` ("unet" or "fcn8s") with the builder's keyword hyper-parameters."""
    return _lookup(name)[0](**hparams)


def model_stride(name: str, **hparams: Any) -> int:
    """Input height and width must be multiples of this (2**depth for U-Net, 32 for FCN-8s)."""
    return _lookup(name)[1](**hparams)
