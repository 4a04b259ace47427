"""SegNet (Badrinarayanan, Kendall & Cipolla, 2017): an encoder whose max poolings remember
where each maximum was, and a decoder that max-unpools each map back to those positions
(:class:`~segops.models.layers.MaxPoolingWithArgmax` / :class:`~segops.models.layers.MaxUnpooling`)
before its convolutions densify it.

``build_segnet`` is the VGG16-encoder SegNet: five blocks of 2, 2, 3, 3, 3 3x3 convs of
``base_filters * (1, 2, 4, 8, 8)`` channels, mirrored by the decoder (stride 32). With
``backbone="vgg16"`` the encoder's convs are Keras VGG16's (64..512 channels, its names,
biases and caffe preprocessing) and take its weights (``backbone_weights``); batch norm follows
every conv either way, as in the paper. ``build_segnet_basic`` is the paper's small variant:
``depth`` levels of one 7x7 conv of ``base_filters`` channels (stride ``2**depth``), decoder
convs without ReLU.
"""

from __future__ import annotations

import keras
from keras import layers

from segops.core.labels import NUM_CLASSES
from segops.models import NO_BACKBONE, NO_WEIGHTS
from segops.models.backbones import build_backbone, preprocess
from segops.models.blocks import BN_MOMENTUM, classifier_head, conv_bn_relu, normalize_input
from segops.models.layers import MaxPoolingWithArgmax, MaxUnpooling

VGG16_BLOCKS = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))  # (convs, width multiplier of base_filters)
VGG16_WIDTH = 64


def conv_bn(x: keras.KerasTensor, filters: int, kernel: int, *, relu: bool, use_bias: bool, name: str):
    """blocks.conv_bn_relu with Keras VGG16's layer names (``name`` is the conv's own, so VGG16's
    weights copy by name), an optional bias (VGG16's convs have one) and an optional ReLU."""
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=use_bias, kernel_initializer="he_normal", name=name)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def build_segnet(
    num_classes: int = NUM_CLASSES,
    base_filters: int = 64,
    backbone: str = NO_BACKBONE,
    backbone_weights: str = NO_WEIGHTS,
    dropout: float = 0.0,
    name: str = "segnet",
) -> keras.Model:
    """SegNet with a VGG16 encoder (``backbone``: ``"none"`` for a from-scratch encoder of
    ``base_filters`` width, ``"vgg16"`` for Keras VGG16's convs and ``backbone_weights``)."""
    if backbone not in (NO_BACKBONE, "vgg16"):
        raise ValueError(f"SegNet's encoder is VGG16: --backbone none or vgg16, got {backbone!r}")
    pretrained = backbone == "vgg16"
    base = VGG16_WIDTH if pretrained else base_filters
    inputs = keras.Input((None, None, 3), name="images")
    x = preprocess("vgg16")(inputs) if pretrained else normalize_input(inputs)
    routes = []
    for block, (convs, mult) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, convs + 1):
            x = conv_bn(x, base * mult, 3, relu=True, use_bias=pretrained, name=f"block{block}_conv{i}")
        x, argmax = MaxPoolingWithArgmax(name=f"block{block}_pool")(x)
        routes.append(argmax)
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for block, (convs, mult) in reversed(list(enumerate(VGG16_BLOCKS, start=1))):
        x = MaxUnpooling(name=f"unpool{block}")([x, routes[block - 1]])
        for i in range(convs, 0, -1):
            last = i == 1  # the block's last conv narrows to the next (shallower) block's width
            width = base * (VGG16_BLOCKS[block - 2][1] if last and block > 1 else mult)
            x = conv_bn(x, width, 3, relu=True, use_bias=False, name=f"dec{block}_conv{i}")
    model = keras.Model(inputs, classifier_head(x, num_classes), name=name)
    if pretrained:
        _copy_vgg16(model, backbone_weights)
    return model


def _copy_vgg16(model: keras.Model, weights: str) -> None:
    """Copy Keras VGG16's conv kernels and biases (by layer name) into the SegNet encoder."""
    vgg = build_backbone("vgg16", weights)
    for layer in vgg.layers:
        if isinstance(layer, layers.Conv2D):
            model.get_layer(layer.name).set_weights(layer.get_weights())


def build_segnet_basic(
    num_classes: int = NUM_CLASSES,
    depth: int = 4,
    base_filters: int = 64,
    kernel_size: int = 7,
    dropout: float = 0.0,
    name: str = "segnet_basic",
) -> keras.Model:
    """SegNet-Basic: ``depth`` levels of conv(7x7) + BN + ReLU + pooling with argmax; the decoder
    unpools and applies conv(7x7) + BN (no ReLU, as in the paper)."""
    inputs = keras.Input((None, None, 3), name="images")
    x = normalize_input(inputs)
    routes = []
    for level in range(depth):
        x = conv_bn_relu(x, base_filters, kernel_size, name=f"enc{level}")
        x, argmax = MaxPoolingWithArgmax(name=f"pool{level}")(x)
        routes.append(argmax)
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        x = MaxUnpooling(name=f"unpool{level}")([x, routes[level]])
        x = conv_bn(x, base_filters, kernel_size, relu=False, use_bias=False, name=f"dec{level}")
    return keras.Model(inputs, classifier_head(x, num_classes), name=name)
