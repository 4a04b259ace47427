"""DDRNet-23-slim (Hong et al., 2021, "Deep Dual-resolution Networks for Real-time and Accurate
Semantic Segmentation of Road Scenes"): a real-time street-scene network of plain 3x3 residual
convolutions, which CPUs run at close to their matrix-multiply speed.

The paper reports, for DDRNet-23-slim (5.7 M parameters, 36.3 GFLOPs at 1024x2048): Cityscapes
77.8 val / 77.4 test mIoU at 101.6 FPS on a GTX 2080Ti (ImageNet-pretrained), and CamVid test
74.7 mIoU at 230 FPS (960x720, pretrained on Cityscapes). segops trains it from scratch.

``build_ddrnet(...)`` returns a ``keras.Model`` mapping float images in 0..255 (N, H, W, 3) to
logits at input resolution; H and W must be multiples of the head's stride, 8
(:data:`segops.models.REALTIME_STRIDE`; the coarser branches join maps of any size:
:class:`~segops.models.layers.UpsampleLike`).

- Stem: two 3x3 stride-2 convs to 1/4, ResNet basic blocks to 1/4 (``c``) and 1/8 (``2c``).
- Two branches from 1/8 on: a high-resolution one that stays at 1/8 with ``2c`` channels and a
  low-resolution one going to 1/16 (``4c``), 1/32 (``8c``) and 1/64; after stages 3 and 4 they
  exchange information (bilateral fusion: the low branch 1x1-compressed and upsampled onto the
  high one, the high one strided-conv'd down onto the low one).
- Stage 5: a bottleneck block on each branch; on the low one, the Deep Aggregation Pyramid
  Pooling Module (DAPPM: average pools of 5/2, 9/4, 17/8 and the global mean, fused
  hierarchically by 3x3 convs) at 1/64, upsampled to 1/8 and added to the high branch.
- Head: BN, ReLU, 3x3 conv (``2c``), BN, ReLU, 1x1 classifier at 1/8, upsampled 8x.

``base_filters`` is the paper's ``planes``: 32 for DDRNet-23-slim, 64 for DDRNet-23. The
paper's auxiliary head (on the high branch after stage 3, loss weight 0.4) is not built: segops
losses take one output.
"""

from __future__ import annotations

import keras
from keras import layers

from segops.core.labels import NUM_CLASSES
from segops.models import REALTIME_STRIDE
from segops.models.blocks import BN_MOMENTUM, classifier_head, normalize_input
from segops.models.layers import BroadcastLike, UpsampleLike

DAPPM_POOLS = ((5, 2), (9, 4), (17, 8))  # (kernel, stride) of the pooled DAPPM branches


def _conv(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str) -> keras.KerasTensor:
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)(x)  # fmt: skip


def _bn(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)(x)


def _relu(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return layers.ReLU(name=name)(x)


def _bn_relu_conv(x: keras.KerasTensor, filters: int, kernel: int, name: str) -> keras.KerasTensor:
    """Pre-activation conv (DAPPM and the head)."""
    return _conv(_relu(_bn(x, f"{name}_bn"), f"{name}_relu"), filters, kernel, 1, f"{name}_conv")


def basic_block(x: keras.KerasTensor, filters: int, stride: int, relu_out: bool, name: str) -> keras.KerasTensor:
    """ResNet basic block: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the (projected) input."""
    y = _relu(_bn(_conv(x, filters, 3, stride, f"{name}_conv1"), f"{name}_bn1"), f"{name}_relu1")
    y = _bn(_conv(y, filters, 3, 1, f"{name}_conv2"), f"{name}_bn2")
    if stride != 1 or x.shape[-1] != filters:
        x = _bn(_conv(x, filters, 1, stride, f"{name}_proj"), f"{name}_proj_bn")
    y = layers.Add(name=f"{name}_add")([y, x])
    return _relu(y, f"{name}_out") if relu_out else y


def bottleneck_block(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    """ResNet bottleneck with expansion 2 (DDRNet's stage 5), no ReLU at the end."""
    y = _relu(_bn(_conv(x, filters, 1, 1, f"{name}_conv1"), f"{name}_bn1"), f"{name}_relu1")
    y = _relu(_bn(_conv(y, filters, 3, stride, f"{name}_conv2"), f"{name}_bn2"), f"{name}_relu2")
    y = _bn(_conv(y, 2 * filters, 1, 1, f"{name}_conv3"), f"{name}_bn3")
    if stride != 1 or x.shape[-1] != 2 * filters:
        x = _bn(_conv(x, 2 * filters, 1, stride, f"{name}_proj"), f"{name}_proj_bn")
    return layers.Add(name=f"{name}_add")([y, x])


def stage(x: keras.KerasTensor, filters: int, blocks: int, stride: int, name: str) -> keras.KerasTensor:
    """``blocks`` basic blocks, the first strided; the last without its output ReLU (the
    fusion that follows applies it)."""
    for i in range(blocks):
        x = basic_block(x, filters, stride if i == 0 else 1, relu_out=i < blocks - 1, name=f"{name}_b{i}")
    return x


def dappm(x: keras.KerasTensor, branch_filters: int, out_filters: int, name: str = "dappm") -> keras.KerasTensor:
    """Deep Aggregation Pyramid Pooling Module: each pooled scale, upsampled back, is added to
    the previous scale's output and refined by a 3x3 conv; the five concatenated, compressed,
    plus a 1x1 shortcut of the input."""
    scales = [_bn_relu_conv(x, branch_filters, 1, f"{name}_scale0")]
    for i, (kernel, stride) in enumerate(DAPPM_POOLS, start=1):
        pooled = layers.AveragePooling2D(kernel, strides=stride, padding="same", name=f"{name}_pool{i}")(x)
        pooled = _bn_relu_conv(pooled, branch_filters, 1, f"{name}_scale{i}")
        up = UpsampleLike(stride, name=f"{name}_up{i}")([pooled, x])
        scales.append(_bn_relu_conv(layers.Add(name=f"{name}_add{i}")([up, scales[-1]]), branch_filters, 3,
                                    f"{name}_process{i}"))  # fmt: skip
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool_global")(x)
    pooled = _bn_relu_conv(pooled, branch_filters, 1, f"{name}_scale4")
    up = BroadcastLike(name=f"{name}_up4")([pooled, x])
    scales.append(_bn_relu_conv(layers.Add(name=f"{name}_add4")([up, scales[-1]]), branch_filters, 3,
                                f"{name}_process4"))  # fmt: skip
    fused = _bn_relu_conv(layers.Concatenate(name=f"{name}_concat")(scales), out_filters, 1, f"{name}_compression")
    shortcut = _bn_relu_conv(x, out_filters, 1, f"{name}_shortcut")
    return layers.Add(name=f"{name}_out")([fused, shortcut])


def build_ddrnet(
    num_classes: int = NUM_CLASSES,
    base_filters: int = 32,
    dropout: float = 0.0,
    name: str = "ddrnet",
) -> keras.Model:
    """DDRNet-23 (``base_filters=64``) or DDRNet-23-slim (32, the default). ``dropout``: rate
    before the classifier (0 disables it)."""
    c = base_filters
    inputs = keras.Input((None, None, 3), name="images")
    x = normalize_input(inputs)
    x = _relu(_bn(_conv(x, c, 3, 2, "stem_conv1"), "stem_bn1"), "stem_relu1")
    x = _relu(_bn(_conv(x, c, 3, 2, "stem_conv2"), "stem_bn2"), "stem_relu2")
    x = stage(x, c, 2, 1, "stage1")
    x = stage(_relu(x, "stage1_relu"), 2 * c, 2, 2, "stage2")  # 1/8
    stage2 = _relu(x, "stage2_relu")

    # stage 3: low 1/16 (4c), high 1/8 (2c), then the bilateral fusion
    low = stage(stage2, 4 * c, 2, 2, "low3")
    high = stage(stage2, 2 * c, 2, 1, "high3")
    low_in = _relu(low, "low3_relu")
    low = layers.Add(name="fuse3_down")([low, _bn(_conv(_relu(high, "high3_relu"), 4 * c, 3, 2, "down3"), "down3_bn")])
    compressed = _bn(_conv(low_in, 2 * c, 1, 1, "compress3"), "compress3_bn")
    high = layers.Add(name="fuse3_up")([high, UpsampleLike(2, name="compress3_up")([compressed, high])])

    # stage 4: low 1/32 (8c), high 1/8 (2c), fusion again
    low = stage(_relu(low, "fuse3_low_relu"), 8 * c, 2, 2, "low4")
    high = stage(_relu(high, "fuse3_high_relu"), 2 * c, 2, 1, "high4")
    low_in = _relu(low, "low4_relu")
    down = _relu(_bn(_conv(_relu(high, "high4_relu"), 4 * c, 3, 2, "down4a"), "down4a_bn"), "down4a_relu")
    down = _bn(_conv(down, 8 * c, 3, 2, "down4b"), "down4b_bn")
    low = layers.Add(name="fuse4_down")([low, down])
    compressed = _bn(_conv(low_in, 2 * c, 1, 1, "compress4"), "compress4_bn")
    high = layers.Add(name="fuse4_up")([high, UpsampleLike(4, name="compress4_up")([compressed, high])])

    # stage 5: bottlenecks, DAPPM on the low branch (1/64), summed onto the high branch
    high = bottleneck_block(_relu(high, "fuse4_high_relu"), 2 * c, 1, "high5")
    low = bottleneck_block(_relu(low, "fuse4_low_relu"), 8 * c, 2, "low5")
    context = dappm(low, 4 * c, 4 * c)
    x = layers.Add(name="fuse5")([high, UpsampleLike(8, name="dappm_up")([context, high])])

    x = _bn_relu_conv(x, 2 * c, 3, "head_a")
    x = _relu(_bn(x, "head_b_bn"), "head_b_relu")
    # the high-resolution branch, and so the head, is at 1/REALTIME_STRIDE (the stem's 1/4, stage 2's 1/2)
    logits = classifier_head(x, num_classes, dropout=dropout, dropout_name="head_dropout",
                             upsample=lambda t: UpsampleLike(REALTIME_STRIDE, name="upsample")([t, inputs]))  # fmt: skip
    return keras.Model(inputs, logits, name=name)
