"""U-Net (Ronneberger et al., 2015) with batch norm, configurable depth, width and upsampling.

``build_unet(...)`` returns a ``keras.Model`` mapping float images in 0..255, shape
(N, H, W, 3), to per-class logits (N, H, W, num_classes). H and W must be multiples of
``2 ** depth`` (:func:`segops.models.unet_stride`): each of the ``depth`` levels halves the resolution and the
decoder concatenates the encoder feature maps at the same size. With a ``backbone``
(:mod:`segops.models.backbones`) the encoder is that pretrained network: the decoder starts from
its stride-32 features, concatenates those at strides 16, 8, 4 and 2 and ends with one more
upsampling to the input size (stride 32, ``depth`` unused).
"""

from __future__ import annotations

import keras
from keras import layers

from segops.core.labels import NUM_CLASSES
from segops.models import NO_BACKBONE, NO_WEIGHTS, UPSAMPLING_MODES
from segops.models.backbones import encode
from segops.models.blocks import classifier_head, conv_bn_relu, dilated_block, normalize_input
from segops.models.layers import BilinearUpsampling


def build_unet(
    num_classes: int = NUM_CLASSES,
    depth: int = 4,
    base_filters: int = 32,
    upsampling: str = "transpose",
    batch_norm: bool = True,
    dropout: float = 0.0,
    dilated: bool = False,
    max_filters: int = 1024,
    backbone: str = NO_BACKBONE,
    backbone_weights: str = NO_WEIGHTS,
    name: str = "unet",
) -> keras.Model:
    """U-Net with ``depth`` down/up-sampling levels; level ``i`` has ``base_filters * 2**i``
    channels (capped at ``max_filters``).

    upsampling: ``"transpose"`` (learned 2x2 transposed conv, as in the paper) or
        ``"bilinear"`` (fixed bilinear resize followed by a 1x1 conv; fewer checkerboard
        artefacts, fewer parameters).
    dropout: rate of the dropout applied to the bottleneck (0 disables it).
    dilated: replace the bottleneck's second conv by an atrous block (rates 1, 2, 4, 8).
    backbone, backbone_weights: a pretrained encoder instead of the convolutional one.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if upsampling not in UPSAMPLING_MODES:
        raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")

    def width(level: int) -> int:
        return min(base_filters * 2**level, max_filters)

    inputs = keras.Input((None, None, 3), name="images")
    if backbone != NO_BACKBONE:
        features = encode(inputs, backbone, backbone_weights)
        skips: list[keras.KerasTensor | None] = [None, *(features[2**level] for level in range(1, 5))]
        x, depth = features[32], 5
    else:
        x = normalize_input(inputs)
        skips = []
        for level in range(depth):
            x = conv_bn_relu(x, width(level), batch_norm=batch_norm, name=f"enc{level}a")
            x = conv_bn_relu(x, width(level), batch_norm=batch_norm, name=f"enc{level}b")
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"pool{level}")(x)

        x = conv_bn_relu(x, width(depth), batch_norm=batch_norm, name="bottleneck_a")
        if dilated:
            x = dilated_block(x, width(depth), batch_norm=batch_norm, name="bottleneck_atrous")
        else:
            x = conv_bn_relu(x, width(depth), batch_norm=batch_norm, name="bottleneck_b")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(depth)):
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(width(level), 2, strides=2, padding="same", name=f"up{level}")(x)
        else:
            # segops' layer, not UpSampling2D(interpolation="bilinear"): Keras' cannot be traced in
            # graph mode at unknown sizes, which is how training and exports run.
            x = BilinearUpsampling(2, name=f"up{level}_resize")(x)
            x = layers.Conv2D(width(level), 1, padding="same", name=f"up{level}")(x)
        if skips[level] is not None:
            x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_bn_relu(x, width(level), batch_norm=batch_norm, name=f"dec{level}a")
        x = conv_bn_relu(x, width(level), batch_norm=batch_norm, name=f"dec{level}b")

    return keras.Model(inputs, classifier_head(x, num_classes), name=name)
