"""The custom Keras layers of the model zoo (backend-neutral: ``keras.ops`` only): max pooling
that keeps its argmax and the max unpooling that routes values back (SegNet), a broadcast
onto another tensor's size (DeepLab's image pooling) and the input preprocessing of the
``keras.applications`` encoders.

Each is registered under the ``segops`` package so checkpoints and ``model.keras`` exports of
models using them load once this module is imported (:mod:`segops.models` imports it on a
build; ``segops.training.loop`` before loading a checkpoint).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

POOL = 2  # SegNet pools 2x2 with stride 2
PREPROCESS_MODES = ("caffe", "torch", "tf", "raw")
# keras.applications.imagenet_utils: "caffe" subtracts these BGR means after flipping RGB->BGR;
# "torch" scales to 0..1 and standardises with these RGB means and deviations.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="segops")
class MaxPoolingWithArgmax(keras.layers.Layer):
    """2x2 max pooling, stride 2, returning ``[pooled, argmax]``; ``argmax`` (int32, same shape
    as ``pooled``) is the position of the maximum inside its window, ``2 * dy + dx``. Height and
    width must be even. The windows are gathered with a reshape/transpose so that every backend
    computes the same thing (TensorFlow's ``max_pool_with_argmax`` has no JAX twin)."""

    def call(self, x: Any) -> list[Any]:
        windows = _windows(x)
        return [ops.max(windows, axis=-1), ops.cast(ops.argmax(windows, axis=-1), "int32")]

    def compute_output_shape(self, input_shape: tuple) -> list[tuple]:
        n, h, w, c = input_shape
        half = (n, None if h is None else h // POOL, None if w is None else w // POOL, c)
        return [half, half]


@keras.saving.register_keras_serializable(package="segops")
class MaxUnpooling(keras.layers.Layer):
    """Inverse of :class:`MaxPoolingWithArgmax`: ``[values, argmax]`` -> a map twice the size
    that holds each value at the position its argmax names and zeros elsewhere. Written as a
    one-hot product, so the gradient of each output position flows to the value routed there."""

    def call(self, inputs: list[Any]) -> Any:
        values, argmax = inputs
        routed = ops.one_hot(argmax, POOL * POOL, dtype=values.dtype) * ops.expand_dims(values, -1)
        shape = ops.shape(values)
        n, h, w, c = shape[0], shape[1], shape[2], values.shape[-1]
        routed = ops.reshape(routed, (n, h, w, c, POOL, POOL))
        routed = ops.transpose(routed, (0, 1, 4, 2, 5, 3))  # (n, h, dy, w, dx, c)
        return ops.reshape(routed, (n, h * POOL, w * POOL, c))

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        n, h, w, c = input_shape[0]
        return (n, None if h is None else h * POOL, None if w is None else w * POOL, c)


def _windows(x: Any) -> Any:
    """(N, H, W, C) -> (N, H/2, W/2, C, 4): the 2x2 windows, flattened row-major (2*dy + dx)."""
    shape = ops.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
    x = ops.reshape(x, (n, h // POOL, POOL, w // POOL, POOL, c))
    x = ops.transpose(x, (0, 1, 3, 5, 2, 4))  # (n, h/2, w/2, c, dy, dx)
    return ops.reshape(x, (n, h // POOL, w // POOL, c, POOL * POOL))


@keras.saving.register_keras_serializable(package="segops")
class BroadcastLike(keras.layers.Layer):
    """``inputs[0]`` (N, 1, 1, C) spread over the height and width of ``inputs[1]`` (DeepLab's
    image-pooling branch back onto the ASPP feature map: the bilinear upsampling of a 1x1 map
    is this constant map). A broadcast add, so it works for sizes known only at run time, in
    eager and in graph (SavedModel) mode alike."""

    def call(self, inputs: list[Any]) -> Any:
        x, like = inputs
        return x + ops.zeros_like(like[..., :1], dtype=x.dtype)

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        (n, _, _, c), (_, h, w, _) = input_shape
        return (n, h, w, c)


@keras.saving.register_keras_serializable(package="segops")
class BilinearUpsampling(keras.layers.Layer):
    """Bilinear upsampling by an integer ``factor`` (half-pixel centres, edges clamped: what
    ``tf.image.resize`` computes). Keras' ``UpSampling2D(interpolation="bilinear")`` cannot be
    traced in graph mode when height and width are unknown (its resize checks the size with a
    Python ``if``); this one is slices and a reshape, so it runs at any size in any mode."""

    def __init__(self, factor: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x: Any) -> Any:
        return self._upsample(self._upsample(x, 1), 2)

    def _upsample(self, x: Any, axis: int) -> Any:
        f = self.factor
        pad = [[0, 0]] * 4
        pad[axis] = [1, 1]
        padded = ops.pad(x, pad, mode="symmetric")  # edge replication by one pixel
        size = ops.shape(x)[axis]

        # rows k .. k + size of the padded map: slices trace and differentiate faster than a gather
        def shifted(k: int) -> Any:
            index = [slice(None)] * 4
            index[axis] = slice(k, k + size)
            return padded[tuple(index)]

        before, here, after = shifted(0), shifted(1), shifted(2)
        phases = []
        for r in range(f):
            p = (r + 0.5) / f - 0.5  # source offset of output phase r, in (-0.5, 0.5)
            phases.append((-p) * before + (1 + p) * here if p < 0 else (1 - p) * here + p * after)
        stacked = ops.stack(phases, axis=axis + 1)  # (..., size, f, ...)
        shape = ops.shape(x)
        new_shape = [shape[0], shape[1], shape[2], x.shape[-1]]
        new_shape[axis] = shape[axis] * f
        return ops.reshape(stacked, new_shape)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        n, h, w, c = input_shape
        return (n, None if h is None else h * self.factor, None if w is None else w * self.factor, c)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="segops")
class EncoderPreprocess(keras.layers.Layer):
    """The ImageNet preprocessing a ``keras.applications`` encoder was trained with, applied to
    float RGB images in 0..255 (so exports keep taking uint8 images):

    caffe: RGB -> BGR, minus the ImageNet BGR means (VGG16, ResNet50);
    torch: 0..1, standardised per channel; tf: -1..1 (MobileNetV2);
    raw: unchanged (EfficientNet rescales and normalises inside the application).
    """

    def __init__(self, mode: str = "tf", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"mode must be one of {PREPROCESS_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, x: Any) -> Any:
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=x.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="segops")
class UpsampleLike(BilinearUpsampling):
    """``inputs[0]`` upsampled bilinearly by ``factor`` and cropped to the height and width of
    ``inputs[1]``: joins a coarse branch onto a finer one whose size is not an exact multiple
    (stride-2 "same" convs round up, so a ``ceil(h / f)`` map upsampled by ``f`` covers ``h``)."""

    def call(self, inputs: list[Any]) -> Any:  # type: ignore[override]
        x, like = inputs
        up = super().call(x)
        shape = ops.shape(like)
        return up[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:  # type: ignore[override]
        (n, _, _, c), (_, h, w, _) = input_shape
        return (n, h, w, c)


def _tent_weights(out_size: Any, in_size: Any, dtype: str) -> Any:
    """(out_size, in_size) bilinear interpolation weights (half-pixel centres, edges clamped)."""
    n_in = ops.cast(in_size, "float32")
    src = (ops.cast(ops.arange(out_size), "float32") + 0.5) * (n_in / ops.cast(out_size, "float32")) - 0.5
    src = ops.minimum(ops.maximum(src, 0.0), n_in - 1.0)
    grid = ops.cast(ops.arange(in_size), "float32")
    return ops.cast(ops.relu(1.0 - ops.abs(src[:, None] - grid[None, :])), dtype)


def _bin_weights(in_size: Any, bins: int, dtype: str) -> Any:
    """(bins, in_size) adaptive average pooling weights: bin i averages rows
    [floor(i * n / bins), ceil((i + 1) * n / bins)), as PyTorch's AdaptiveAvgPool2d."""
    n = ops.cast(in_size, "float32")
    index = ops.cast(ops.arange(bins), "float32")
    start = ops.floor(index * n / bins)
    end = ops.ceil((index + 1.0) * n / bins)
    rows = ops.cast(ops.arange(in_size), "float32")
    inside = ops.cast((rows[None, :] >= start[:, None]) & (rows[None, :] < end[:, None]), "float32")
    return ops.cast(inside / ops.sum(inside, axis=1, keepdims=True), dtype)


@keras.saving.register_keras_serializable(package="segops")
class AdaptiveAveragePooling(keras.layers.Layer):
    """Average pooling of any (N, H, W, C) map onto a fixed ``bins x bins`` grid (the pyramid
    pooling module of PSPNet / Fast-SCNN). Two small matrix products with the bin-averaging
    weights, so H and W may be known only at run time, on every backend."""

    def __init__(self, bins: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bins = int(bins)

    def call(self, x: Any) -> Any:
        shape = ops.shape(x)
        rows = _bin_weights(shape[1], self.bins, x.dtype)
        cols = _bin_weights(shape[2], self.bins, x.dtype)
        return ops.einsum("bh,nhwc,vw->nbvc", rows, x, cols)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.bins, self.bins, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bins": self.bins}


@keras.saving.register_keras_serializable(package="segops")
class ResizeLike(keras.layers.Layer):
    """``inputs[0]``, a small map (pooled context), resized bilinearly to the height and width
    of ``inputs[1]``, both sizes known only at run time: interpolation-weight matrices built
    from the run-time sizes, two matrix products. Meant for maps of a few cells; a large
    integer upsampling is :class:`BilinearUpsampling`'s job."""

    def call(self, inputs: list[Any]) -> Any:
        x, like = inputs
        target, source = ops.shape(like), ops.shape(x)
        rows = _tent_weights(target[1], source[1], x.dtype)
        cols = _tent_weights(target[2], source[2], x.dtype)
        return ops.einsum("hb,nbvc,wv->nhwc", rows, x, cols)

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        (n, _, _, c), (_, h, w, _) = input_shape
        return (n, h, w, c)
