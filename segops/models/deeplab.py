"""DeepLabV3+ (Chen et al., 2018): an atrous encoder at output stride 16 or 8, atrous spatial
pyramid pooling (ASPP) and a decoder that refines the upsampled ASPP features with the encoder's
stride-4 (low-level) features.

``build_deeplabv3plus(...)`` returns a ``keras.Model`` mapping float images in 0..255
(N, H, W, 3) to logits at input resolution; H and W must be multiples of ``output_stride``.

- Encoder: a ``keras.applications`` backbone made atrous (:mod:`segops.models.backbones`), or,
  with ``backbone="none"``, a from-scratch VGG-like encoder of five levels (``base_filters *
  (1, 2, 4, 8, 16)`` channels) whose levels past the output stride dilate instead of pooling.
- ASPP: a 1x1 conv, three 3x3 atrous convs at rates 6, 12, 18 (OS 16; doubled at OS 8) and image
  pooling (global average, 1x1 conv, spread back over the map), concatenated and projected to
  ``aspp_filters``.
- Decoder: the ASPP output upsampled bilinearly to stride 4, concatenated with the low-level
  features reduced to 48 channels by a 1x1 conv, two 3x3 convs, the classifier, and a bilinear
  upsampling by 4 to the input size.
- ``separable``: the 3x3 convs of ASPP and the decoder are atrous separable (depthwise 3x3, BN,
  ReLU, then 1x1, BN, ReLU), as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import layers

from segops.core.labels import NUM_CLASSES
from segops.models import NO_BACKBONE, NO_WEIGHTS, OUTPUT_STRIDES
from segops.models.backbones import encode
from segops.models.blocks import BN_MOMENTUM, classifier_head, conv_bn_relu, normalize_input
from segops.models.layers import BilinearUpsampling, BroadcastLike

ASPP_RATES_OS16 = (6, 12, 18)
LOW_LEVEL_STRIDE = 4
LOW_LEVEL_FILTERS = 48  # the paper's reduction of the low-level features


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """ASPP dilation rates: 6, 12, 18 at output stride 16, doubled at 8."""
    return tuple(r * 16 // output_stride for r in ASPP_RATES_OS16)


def separable_conv_bn_relu(x: keras.KerasTensor, filters: int, dilation_rate: int = 1, *, name: str):
    """The paper's atrous separable convolution: 3x3 depthwise (dilated) -> BN -> ReLU, then 1x1
    -> BN -> ReLU; ~9x fewer multiply-adds than a 3x3 conv at 128+ channels."""
    x = layers.DepthwiseConv2D(3, padding="same", dilation_rate=dilation_rate, use_bias=False,
                               name=f"{name}_depthwise")(x)  # fmt: skip
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_depthwise_bn")(x)
    x = layers.ReLU(name=f"{name}_depthwise_relu")(x)
    return conv_bn_relu(x, filters, 1, name=name)


def _conv3x3(separable: bool) -> Callable[..., keras.KerasTensor]:
    if separable:
        return separable_conv_bn_relu
    return lambda x, filters, dilation_rate=1, *, name: conv_bn_relu(x, filters, 3, dilation_rate=dilation_rate,
                                                                      name=name)  # fmt: skip


def aspp(x: keras.KerasTensor, filters: int, rates: Sequence[int], dropout: float, name: str = "aspp",
         separable: bool = False):  # fmt: skip
    """Atrous spatial pyramid pooling: 1x1, 3x3 at each rate (separable: depthwise + 1x1), image
    pooling; concat; 1x1."""
    conv3x3 = _conv3x3(separable)
    branches = [conv_bn_relu(x, filters, 1, name=f"{name}_1x1")]
    branches += [conv3x3(x, filters, dilation_rate=r, name=f"{name}_rate{r}") for r in rates]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_image_pool")(x)
    pooled = conv_bn_relu(pooled, filters, 1, name=f"{name}_image")
    branches.append(BroadcastLike(name=f"{name}_image_broadcast")([pooled, x]))
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    x = conv_bn_relu(x, filters, 1, name=f"{name}_project")
    return layers.Dropout(dropout, name=f"{name}_dropout")(x) if dropout > 0 else x


def scratch_encoder(x: keras.KerasTensor, base_filters: int, output_stride: int) -> dict[int, keras.KerasTensor]:
    """Five levels of two 3x3 convs; level ``i`` ends at stride ``2**(i+1)`` by max pooling, or,
    past ``output_stride``, stays there with its convs dilated by the stride it did not take."""
    features, stride = {}, 1
    for level in range(5):
        rate = max(1, stride // output_stride)  # > 1 once the stride is capped
        width = base_filters * 2**level
        x = conv_bn_relu(x, width, dilation_rate=rate, name=f"enc{level}a")
        x = conv_bn_relu(x, width, dilation_rate=rate, name=f"enc{level}b")
        if stride < output_stride:
            x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
        stride *= 2
        features[stride] = x
    return features


def build_deeplabv3plus(
    num_classes: int = NUM_CLASSES,
    output_stride: int = 16,
    backbone: str = NO_BACKBONE,
    backbone_weights: str = NO_WEIGHTS,
    base_filters: int = 32,
    aspp_filters: int | None = None,
    dropout: float = 0.0,
    separable: bool = False,
    name: str = "deeplabv3plus",
) -> keras.Model:
    """DeepLabV3+. ``aspp_filters`` (default ``8 * base_filters``, the paper's 256 at 32) sets the
    width of ASPP and the decoder; ``separable``: their 3x3 convolutions are atrous separable
    (the paper's choice), which cuts the decoder's cost at stride 4 about 7x."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    filters = aspp_filters or 8 * base_filters
    inputs = keras.Input((None, None, 3), name="images")
    if backbone == NO_BACKBONE:
        features = scratch_encoder(normalize_input(inputs), base_filters, output_stride)
    else:
        features = encode(inputs, backbone, backbone_weights, output_stride)
    x = aspp(features[32], filters, aspp_rates(output_stride), dropout, separable=separable)

    x = BilinearUpsampling(output_stride // LOW_LEVEL_STRIDE, name="aspp_up")(x)
    low = conv_bn_relu(features[LOW_LEVEL_STRIDE], LOW_LEVEL_FILTERS, 1, name="low_level")
    x = layers.Concatenate(name="decoder_concat")([x, low])
    conv3x3 = _conv3x3(separable)
    x = conv3x3(x, filters, name="decoder_a")
    x = conv3x3(x, filters, name="decoder_b")
    logits = classifier_head(x, num_classes, upsample=BilinearUpsampling(LOW_LEVEL_STRIDE, name="upsample"))
    return keras.Model(inputs, logits, name=name)
