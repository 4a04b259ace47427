"""FCN-8s (Long, Shelhamer & Darrell, 2015) with a VGG-style encoder trainable from scratch.

``build_fcn8s(...)`` returns a ``keras.Model`` mapping float images in 0..255 (N, H, W, 3) to
per-class logits (N, H, W, num_classes). The encoder has five VGG blocks (2, 2, 3, 3, 3 convs of
``base_filters * (1, 2, 4, 8, 8)`` channels, each followed by 2x2 max pooling), so H and W must be
multiples of 32 (:data:`segops.models.FCN_STRIDE`). The 8s head scores pool5 (after the "fc6/fc7" convs),
upsamples 2x with a transposed conv, adds the scores of pool4, upsamples 2x again, adds the
scores of pool3 and upsamples 8x to the input resolution. Transposed convs start as bilinear
upsampling and the skip scores start at zero (as in the paper), so training starts from the
coarse FCN-32s prediction and learns the finer corrections.

Deviations from the paper, for training from scratch: batch norm after every conv (optional),
"same" padding instead of the 100-pixel input padding and crop layers, and fc6 has
``fc_filters`` channels (default ``16 * base_filters``; the paper's VGG-16 has 4096 = 64 * 64).
``base_filters=64, fc_filters=4096, batch_norm=False`` gives the original layer sizes.

With ``backbone="vgg16"`` (the paper's encoder, :mod:`segops.models.backbones`) or another
pretrained encoder, pool3, pool4 and pool5 are the encoder's stride 8, 16 and 32 features.
"""

from __future__ import annotations

import keras
from keras import layers

from segops.core.labels import NUM_CLASSES
from segops.models import NO_BACKBONE, NO_WEIGHTS
from segops.models.backbones import encode
from segops.models.blocks import (
    bilinear_kernel,
    classifier_head,
    conv_bn_relu,
    dilated_block,
    normalize_input,
)

VGG_BLOCKS = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))  # (convs, width multiplier of base_filters)


def build_fcn8s(
    num_classes: int = NUM_CLASSES,
    base_filters: int = 64,
    fc_filters: int | None = None,
    fc_kernel: int = 7,
    batch_norm: bool = True,
    dropout: float = 0.0,
    dilated: bool = False,
    backbone: str = NO_BACKBONE,
    backbone_weights: str = NO_WEIGHTS,
    name: str = "fcn8s",
) -> keras.Model:
    """FCN-8s. ``dilated`` replaces fc6 by an atrous block (rates 1, 2, 4, 8) of ``fc_filters``."""
    fc_filters = fc_filters or 16 * base_filters
    inputs = keras.Input((None, None, 3), name="images")
    if backbone != NO_BACKBONE:
        features = encode(inputs, backbone, backbone_weights)
        pool3, pool4, x = features[8], features[16], features[32]
    else:
        x = normalize_input(inputs)
        pools = []
        for block, (convs, mult) in enumerate(VGG_BLOCKS, start=1):
            for i in range(1, convs + 1):
                x = conv_bn_relu(x, base_filters * mult, batch_norm=batch_norm, name=f"block{block}_{i}")
            x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
            pools.append(x)
        pool3, pool4 = pools[2], pools[3]

    if dilated:
        x = dilated_block(x, fc_filters, batch_norm=batch_norm, name="fc6_atrous")
    else:
        x = conv_bn_relu(x, fc_filters, fc_kernel, batch_norm=batch_norm, name="fc6")
    if dropout > 0:
        x = layers.Dropout(dropout, name="fc6_dropout")(x)
    x = conv_bn_relu(x, fc_filters, 1, batch_norm=batch_norm, name="fc7")

    def upsample(t: keras.KerasTensor, factor: int, name: str) -> keras.KerasTensor:
        return layers.Conv2DTranspose(
            num_classes, 2 * factor, strides=factor, padding="same", use_bias=False, name=name
        )(t)

    def skip_score(t: keras.KerasTensor, name: str) -> keras.KerasTensor:
        return layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=name)(t)

    def fuse_skips(score: keras.KerasTensor) -> keras.KerasTensor:
        x = upsample(score, 2, "upscore2")  # 1/32 -> 1/16
        x = layers.Add(name="fuse_pool4")([x, skip_score(pool4, "score_pool4")])
        x = upsample(x, 2, "upscore_pool4")  # 1/16 -> 1/8
        x = layers.Add(name="fuse_pool3")([x, skip_score(pool3, "score_pool3")])
        return upsample(x, 8, "upscore8")  # 1/8 -> 1/1

    logits = classifier_head(x, num_classes, dropout=dropout, dropout_name="fc7_dropout", name="score_fr",
                             upsample=fuse_skips)  # fmt: skip
    model = keras.Model(inputs, logits, name=name)

    # Bilinear initialisation of the learnable upsampling (set after building so the saved
    # config only names built-in initialisers and the .keras file loads without segops).
    for layer_name in ("upscore2", "upscore_pool4", "upscore8"):
        layer = model.get_layer(layer_name)
        layer.kernel.assign(bilinear_kernel(layer.kernel.shape[0], num_classes))
    return model
