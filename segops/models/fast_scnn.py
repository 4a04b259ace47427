"""Fast-SCNN (Poudel et al., 2019, "Fast-SCNN: Fast Semantic Segmentation Network"): a two-branch
real-time network whose branches share their first layers ("learning to downsample").

The paper reports 68.0 % mIoU on the Cityscapes test set (69.2 val) at 123.5 FPS on a Titan Xp
for 1024x2048 inputs, with 1.11 M parameters, trained from scratch (no ImageNet weights: 68.6 %
val with them, a gain the authors call insignificant). It reports no CamVid number.

``build_fast_scnn(...)`` returns a ``keras.Model`` mapping float images in 0..255 (N, H, W, 3) to
logits at input resolution; H and W must be multiples of the fusion's stride, 8
(:data:`segops.models.REALTIME_STRIDE`; the global branch's 1/32 map joins at any size through
:class:`~segops.models.layers.UpsampleLike`).

- Learning to downsample (to 1/8): a 3x3 stride-2 conv (32), two depthwise-separable stride-2
  convs (48, 64).
- Global feature extractor: inverted-residual bottlenecks (expansion 6) of 64 (x3, to 1/16),
  96 (x3, to 1/32) and 128 (x3) channels, then a pyramid pooling module (bins 1, 2, 3, 6:
  :class:`~segops.models.layers.AdaptiveAveragePooling`, 1x1 convs, resized back, concatenated,
  projected to 128).
- Feature fusion at 1/8: the global features upsampled 4x, a 3x3 depthwise conv and a 1x1 conv,
  added to a 1x1 conv of the 1/8 features.
- Classifier: two depthwise-separable convs (128), dropout, a 1x1 conv; logits upsampled 8x.

``base_filters`` scales every width by ``base_filters / 32`` (32: the paper's network).
"""

from __future__ import annotations

import keras
from keras import layers

from segops.core.labels import NUM_CLASSES
from segops.models import REALTIME_STRIDE
from segops.models.blocks import BN_MOMENTUM, classifier_head, normalize_input
from segops.models.layers import AdaptiveAveragePooling, ResizeLike, UpsampleLike

EXPANSION = 6
PPM_BINS = (1, 2, 3, 6)
PAPER_BASE = 32  # base_filters of the paper's widths
WIDTHS = {"ltd": (32, 48, 64), "gfe": (64, 96, 128), "fusion": 128}


def _bn(x: keras.KerasTensor, name: str, relu: bool = True) -> keras.KerasTensor:
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _conv(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)  # fmt: skip
    return _bn(x, name, relu)


def _dwconv(x: keras.KerasTensor, stride: int, name: str, dilation: int = 1, relu: bool = True):
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", dilation_rate=dilation, use_bias=False,
                               name=f"{name}_dw")(x)  # fmt: skip
    return _bn(x, f"{name}_dw", relu)


def separable(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    """Depthwise 3x3 (BN, ReLU), pointwise 1x1 (BN, ReLU)."""
    return _conv(_dwconv(x, stride, name), filters, 1, 1, f"{name}_pw")


def bottleneck(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    """MobileNetV2 inverted residual: 1x1 expansion, 3x3 depthwise (strided), linear 1x1."""
    y = _conv(x, EXPANSION * x.shape[-1], 1, 1, f"{name}_expand")
    y = _dwconv(y, stride, name)
    y = _conv(y, filters, 1, 1, f"{name}_project", relu=False)
    if stride == 1 and x.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def pyramid_pooling(x: keras.KerasTensor, name: str = "ppm") -> keras.KerasTensor:
    """PSPNet's module: the map average-pooled onto 1x1, 2x2, 3x3, 6x6 grids, each 1x1-conv'd to
    a quarter of the channels and resized back; concatenated with the input and projected."""
    channels = x.shape[-1]
    branches = [x]
    for bins in PPM_BINS:
        pooled = AdaptiveAveragePooling(bins, name=f"{name}_pool{bins}")(x)
        pooled = _conv(pooled, channels // 4, 1, 1, f"{name}_bins{bins}")
        branches.append(ResizeLike(name=f"{name}_up{bins}")([pooled, x]))
    return _conv(layers.Concatenate(name=f"{name}_concat")(branches), channels, 1, 1, f"{name}_project")


def build_fast_scnn(
    num_classes: int = NUM_CLASSES,
    base_filters: int = PAPER_BASE,
    dropout: float = 0.1,
    name: str = "fast_scnn",
) -> keras.Model:
    """Fast-SCNN; ``dropout`` before the classifier (the paper's 0.1)."""

    def width(paper: int) -> int:
        return max(8, round(paper * base_filters / PAPER_BASE))

    inputs = keras.Input((None, None, 3), name="images")
    x = normalize_input(inputs)
    ltd1, ltd2, ltd3 = WIDTHS["ltd"]
    x = _conv(x, width(ltd1), 3, 2, "ltd_conv")
    x = separable(x, width(ltd2), 2, "ltd_sep1")
    high = separable(x, width(ltd3), 2, "ltd_sep2")  # 1/8

    x = high
    for stage, filters in enumerate(WIDTHS["gfe"]):
        for i in range(3):
            stride = 2 if i == 0 and stage < 2 else 1
            x = bottleneck(x, width(filters), stride, f"gfe{stage}_b{i}")
    x = pyramid_pooling(x)  # 1/32

    fusion = width(WIDTHS["fusion"])
    low = UpsampleLike(4, name="fusion_up")([x, high])
    low = _dwconv(low, 1, "fusion_low", dilation=4)  # the paper's dilated depthwise conv on the upsampled map
    low = _conv(low, fusion, 1, 1, "fusion_low_pw", relu=False)
    high = _conv(high, fusion, 1, 1, "fusion_high", relu=False)
    x = layers.ReLU(name="fusion_relu")(layers.Add(name="fusion_add")([low, high]))

    x = separable(x, fusion, 1, "classifier_sep1")
    x = separable(x, fusion, 1, "classifier_sep2")
    # the fusion, and so the head, is at 1/REALTIME_STRIDE (learning to downsample: three stride-2 convs)
    logits = classifier_head(x, num_classes, dropout=dropout,
                             upsample=lambda t: UpsampleLike(REALTIME_STRIDE, name="upsample")([t, inputs]))  # fmt: skip
    return keras.Model(inputs, logits, name=name)
