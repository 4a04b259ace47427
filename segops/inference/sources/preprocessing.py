"""How a model was trained to see images, as data (:class:`Preprocessing`): how uint8 RGB images
become the network's input (resize convention, stretch or letterbox, channel order, value range,
normalisation, layout, a fixed batch) and how its output becomes per-pixel class probabilities
at the image's resolution (softmax, probabilities, or independent per-class sigmoids with a
threshold and a background class; a card's class map).

Every model source that is not a segops export applies one (:class:`~segops.inference.sources.
base.PreparedModel`); its fields come from the model's card (:mod:`.card`) or a keras-hub
preset's image converter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NHWC", "NCHW")
SIGMOID, SIGMOID_LOGITS = "sigmoid", "sigmoid_logits"
SIGMOID_KINDS = (SIGMOID, SIGMOID_LOGITS)
OUTPUT_KINDS = ("logits", "probabilities", *SIGMOID_KINDS)
# the network's input value range before mean/std: 0..255 pixels / divisor + offset (a division,
# as `x / 255.0` and `x / 127.5 - 1` are written: multiplying by 1/255 rounds differently)
VALUE_RANGES = {"0..255": (1.0, 0.0), "0..1": (255.0, 0.0), "-1..1": (127.5, -1.0)}
# where a resize samples: half-pixel centres (TF2, PyTorch align_corners=False, OpenCV), corner
# pixels aligned (TF1 align_corners=True, PyTorch align_corners=True), or TF1's default
RESIZES = ("half_pixel", "align_corners", "asymmetric")
FITS = ("stretch", "letterbox")
# a "probabilities" or "sigmoid" output outside this is not what the card says it is
PROBABILITY_SLACK = 1e-2


@dataclass(frozen=True)
class Preprocessing:
    """The model's input and output conventions. Input: images resized to ``size`` (H, W) when
    set (else padded to a multiple of ``stride`` by the tiler) with the ``resize`` convention,
    stretched or letterboxed (``fit``: aspect kept, centred, padded with 0 in the network's input
    units), channels in ``channels`` order, scaled to ``value_range``, normalised as ``(x -
    mean) / std`` (in that range's units) or, for keras-hub converters, ``x * scale + offset``,
    laid out as ``layout``, at most ``batch`` images per call when the network has a fixed
    batch. Output: ``output_kind`` per class, laid out as ``output_layout``, at any resolution
    (resized back to the input's)."""

    channels: str = "RGB"
    layout: str = "NHWC"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None
    stride: int = 1
    interpolation: str = "bilinear"
    antialias: bool = False
    value_range: str = "0..255"
    resize: str = "half_pixel"
    fit: str = "stretch"
    batch: int = 0  # the network's fixed batch; 0: any
    output_kind: str = "logits"
    output_layout: str = "NHWC"
    output_channels: int = 0  # what the network's output must have; 0: not checked
    threshold: float = 0.5  # sigmoid outputs: a class is present where its probability exceeds it
    # a card's class_map: per model class, the label-set train id it adds to (-1: unmapped), and
    # the label set's class count; None: the model's classes are the label set's
    class_map: tuple[int, ...] | None = None
    mapped_classes: int = 0

    def __post_init__(self) -> None:
        for value, choices in ((self.channels, CHANNEL_ORDERS), (self.layout, LAYOUTS), (self.output_layout, LAYOUTS),
                               (self.output_kind, OUTPUT_KINDS), (self.value_range, tuple(VALUE_RANGES)),
                               (self.resize, RESIZES), (self.fit, FITS)):  # fmt: skip
            if value not in choices:
                raise ValueError(f"preprocessing: {value!r} is not one of {', '.join(choices)}")
        if not 0 < self.threshold < 1 or self.batch < 0:
            raise ValueError(f"preprocessing: threshold {self.threshold} not in (0, 1) or batch {self.batch} < 0")
        if self.fit == "letterbox" and self.size is None:
            raise ValueError("preprocessing: a letterbox needs a size")

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB -> the float32 tensor the network takes."""
        x = images.astype(np.float32)
        box = self.box(x.shape[1], x.shape[2])
        if box is not None and tuple(x.shape[1:3]) != box[2:]:
            x = resize(x, box[2:], self.interpolation, self.antialias, self.resize)
        if self.channels == "BGR":
            x = x[..., ::-1]
        divisor, offset = VALUE_RANGES[self.value_range]
        if (divisor, offset) != (1.0, 0.0):
            x = x / np.float32(divisor) + np.float32(offset)
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        if self.scale is not None:
            x = x * np.asarray(self.scale, np.float32)
        if self.offset is not None:
            x = x + np.asarray(self.offset, np.float32)
        if box is not None and box[2:] != self.size:
            assert self.size is not None
            canvas = np.zeros((x.shape[0], *self.size, x.shape[3]), np.float32)
            top, left, h, w = box
            canvas[:, top : top + h, left : left + w] = x
            x = canvas
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, left, h, w) of a ``height`` x ``width`` image in the network's input; None: the
        image goes in at its own size."""
        if self.size is None:
            return None
        if self.fit == "stretch":
            return (0, 0, *self.size)
        return letterbox_box(height, width, self.size)

    def probabilities(self, output: np.ndarray, height: int, width: int) -> np.ndarray:
        """The network's output -> float32 [N, height, width, C] probabilities; ValueError when
        the output cannot be what the card says (channel count, values)."""
        out = np.asarray(output, dtype=np.float32)
        if self.output_layout == "NCHW":
            out = out.transpose(0, 2, 3, 1)
        if self.output_channels and out.shape[-1] != self.output_channels:
            raise ValueError(f"the model's output has {out.shape[-1]} channels; its card reads {self.output_channels} "
                             f"(output.kind {self.output_kind!r})")  # fmt: skip
        sigmoid = self.output_kind in SIGMOID_KINDS
        if self.output_kind == SIGMOID_LOGITS:
            out = 1 / (1 + np.exp(-out))
        elif sigmoid:
            self._check_range(out, "probabilities in [0, 1]", SIGMOID_LOGITS)
        elif self.output_kind == "logits":
            out = softmax(out)
        else:
            self._check_range(out.sum(axis=-1), "class probabilities summing to 1", "logits", low=1, high=1)
        if sigmoid:  # each class's own probability resized first, as a binary model's pipeline resizes its mask
            out = exclusive(self._to_image(out, height, width), self.threshold)
        if self.class_map is not None:  # before resizing: fewer channels, and both are linear
            out = out @ class_map_matrix(self.class_map, self.mapped_classes)
        if not sigmoid:  # probabilities, not logits, are interpolated: a convex mix of distributions sums to 1
            out = self._to_image(out, height, width)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _check_range(self, values: np.ndarray, meant: str, instead: str, low: float = 0, high: float = 1) -> None:
        lo, hi = float(values.min()), float(values.max())
        if lo < low - PROBABILITY_SLACK or hi > high + PROBABILITY_SLACK:
            raise ValueError(f"output.kind {self.output_kind!r} reads {meant}; the model's output holds "
                             f"{lo:.4g}..{hi:.4g}: is it {instead!r}?")  # fmt: skip

    def _to_image(self, out: np.ndarray, height: int, width: int) -> np.ndarray:
        """[N, h, w, C] output -> [N, height, width, C]: the letterbox's padding cropped away."""
        box = self.box(height, width)
        if box is not None and box[2:] != self.size:
            assert self.size is not None
            if out.shape[1:3] != self.size:
                out = resize(out, self.size, "bilinear", False, self.resize)
            top, left, h, w = box
            out = out[:, top : top + h, left : left + w]
        if out.shape[1:3] != (height, width):
            out = resize(out, (height, width), "bilinear", False, self.resize)
        return out


def letterbox_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, h, w): a ``height`` x ``width`` image scaled to fit ``size`` with its aspect
    kept, centred (MediaPipe's and most detectors' letterbox)."""
    scale = min(size[0] / height, size[1] / width)
    h, w = max(1, min(size[0], round(height * scale))), max(1, min(size[1], round(width * scale)))
    return (size[0] - h) // 2, (size[1] - w) // 2, h, w


def exclusive(probs: np.ndarray, threshold: float) -> np.ndarray:
    """[..., C] independent per-class probabilities -> [..., C + 1] exclusive ones, the
    background first: its argmax is the background where no class exceeds ``threshold``, else
    the most probable class. Each probability is mapped piecewise-linearly so that ``threshold``
    becomes 0.5 (the identity at 0.5); the background is 1 - the largest; one class gives
    exactly [1 - p, p]. A tie (p == threshold) is background, as the argmax takes the first."""
    q = probs
    if threshold != 0.5:
        t = np.float32(threshold)
        q = np.where(probs <= t, probs * (0.5 / t), 0.5 + (probs - t) * (0.5 / (1 - t))).astype(np.float32)
    out = np.concatenate([1 - q.max(axis=-1, keepdims=True), q], axis=-1)
    if q.shape[-1] > 1:  # several classes: a distribution again (one class is one already)
        out /= out.sum(axis=-1, keepdims=True)
    return out


def class_map_matrix(class_map: tuple[int, ...], mapped_classes: int) -> np.ndarray:
    """[model classes, label-set classes (+1 when some are unmapped)] 0/1 matrix: probabilities
    @ it sums the model classes mapped onto each label-set class; the extra last column collects
    the unmapped ones (its argmax is written as ignore)."""
    unmapped = any(t < 0 for t in class_map)
    m = np.zeros((len(class_map), mapped_classes + unmapped), np.float32)
    for source, target in enumerate(class_map):
        m[source, target if target >= 0 else mapped_classes] = 1.0
    return m


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def resize(x: np.ndarray, size: tuple[int, int], interpolation: str, antialias: bool,
           convention: str = "half_pixel") -> np.ndarray:  # fmt: skip
    """[N, H, W, C] float32 resized to ``size`` by TensorFlow's image resize: half-pixel centres
    (the op Keras' resizing layers and keras-hub's image converters use), or TF1's corner-aligned
    or asymmetric sampling (bilinear or nearest, no antialias)."""
    import tensorflow as tf

    if convention == "half_pixel":
        return tf.image.resize(x, size, method=interpolation, antialias=antialias).numpy()
    if antialias or interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"a {convention} resize is bilinear or nearest without antialias, not {interpolation}")
    op = tf.raw_ops.ResizeBilinear if interpolation == "bilinear" else tf.raw_ops.ResizeNearestNeighbor
    out = op(images=tf.constant(x, tf.float32), size=size, align_corners=convention == "align_corners",
             half_pixel_centers=False)  # fmt: skip
    return out.numpy().astype(np.float32)
