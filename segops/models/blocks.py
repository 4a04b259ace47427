"""Building blocks shared by the segmentation models (keras.layers only: backend-neutral)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import layers

# Moving-average momentum of BatchNormalization: 0.9 (PyTorch's default) instead of Keras' 0.99.
# 0.99 averages the batch statistics over ~100 steps, so in short CPU runs the statistics used at
# validation and export lag the weights.
# Measurements: docs/benchmarks.md, "Demo recipe" and "Measurements formerly in docstrings".
BN_MOMENTUM = 0.9


def conv_bn_relu(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int = 3,
    *,
    batch_norm: bool = True,
    dilation_rate: int = 1,
    name: str,
) -> keras.KerasTensor:
    """Conv -> (BatchNorm) -> ReLU. The conv has no bias when batch norm follows (BN's beta is one)."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        dilation_rate=dilation_rate,
        use_bias=not batch_norm,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    if batch_norm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def dilated_block(
    x: keras.KerasTensor,
    filters: int,
    rates: Sequence[int] = (1, 2, 4, 8),
    *,
    batch_norm: bool = True,
    name: str,
) -> keras.KerasTensor:
    """Atrous block (ASPP-like): parallel 3x3 convs at several dilation rates, concatenated and
    projected back to ``filters`` with a 1x1 conv. Widens the receptive field at the coarsest
    resolution without further downsampling (the stride of the model is unchanged)."""
    branches = [
        conv_bn_relu(x, filters, 3, batch_norm=batch_norm, dilation_rate=r, name=f"{name}_d{r}") for r in rates
    ]
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    return conv_bn_relu(x, filters, 1, batch_norm=batch_norm, name=f"{name}_project")


def normalize_input(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """Images arrive as float 0..255; the model maps them to -1..1 itself so exports need no
    preprocessing code."""
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inputs)


def logits_head(x: keras.KerasTensor) -> keras.KerasTensor:
    """Identity in float32: under a mixed-precision policy the logits (and so the loss) stay float32."""
    return layers.Activation("linear", dtype="float32", name="logits")(x)


def classifier_head(
    x: keras.KerasTensor,
    num_classes: int,
    *,
    dropout: float = 0.0,
    dropout_name: str = "classifier_dropout",
    name: str = "classifier",
    upsample: Callable[[keras.KerasTensor], keras.KerasTensor] | None = None,
) -> keras.KerasTensor:
    """The tail every model ends with (mmsegmentation's ``cls_seg``): dropout when ``dropout`` > 0,
    a 1x1 conv to ``num_classes`` scores, ``upsample`` back to the input size (a resize, or
    FCN's learned skip fusion), and the float32 :func:`logits_head`.

    The names are the ones models were saved with (``classifier``, FCN's ``score_fr``, ...):
    checkpoints and ``.keras`` files are matched by layer name, so they must not change.
    """
    if dropout > 0:
        x = layers.Dropout(dropout, name=dropout_name)(x)
    x = layers.Conv2D(num_classes, 1, name=name)(x)
    if upsample is not None:
        x = upsample(x)
    return logits_head(x)


def bilinear_kernel(kernel_size: int, channels: int) -> np.ndarray:
    """Conv2DTranspose kernel (k, k, channels, channels) that performs bilinear upsampling
    channel by channel (the FCN paper's initialisation of its learnable upsampling)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    kernel = np.zeros((kernel_size, kernel_size, channels, channels), dtype=np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = filt
    return kernel


def downsampled(model: keras.Model, factor: int) -> keras.Model:
    """``model`` applied to its input average-pooled by ``factor`` (exact area downsampling), its
    logits upsampled bilinearly back to the input size: a network trained and run at
    ``1/factor`` of the prepared resolution (``factor**2`` fewer pixels per step), whose exports
    still take and return full-size images, so infer, tiling and the CRF see no difference."""
    from segops.models.layers import BilinearUpsampling

    inputs = keras.Input((None, None, 3), name="images")
    x = layers.AveragePooling2D(factor, name="input_downsample")(inputs)
    x = model(x)
    x = BilinearUpsampling(factor, dtype="float32", name="logits_upsample")(x)
    return keras.Model(inputs, x, name=f"{model.name}_ds{factor}")
