"""Reading and decoding images for inference: one image and its ground truth
(:func:`load_example`, raising BadInput with a reason) into an
:class:`~segops.inference.stage_values.ImageExample`.

The decoders (OpenCV, libpng, libjpeg) run in the isolated helper process of
:mod:`segops.core.isolation`: a file that crashes one costs that image only. A ground truth
that cannot be used (unreadable, wrong size, unknown label ids) does not cost the image: it gets
its masks and a row without metrics, and the label problem is reported as ``label_error``.

Reading is split from decoding (:func:`read_inputs`, then :func:`decode_examples` for a batch)
so that the decode stage crosses to the helper once per batch of images, not once per image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from segops.core import deadletter, fs, imageio, isolation
from segops.core.label_sets import LabelSet, cityscapes
from segops.inference.discovery import WorkItem
from segops.inference.stage_values import ImageExample


def decode_pair(image: bytes, label: bytes | None, max_pixels: int) -> tuple[np.ndarray, np.ndarray | str | None]:
    """(RGB, labelIds or the reason the label PNG is unusable, or None): every native decode of
    one input, so it runs as one isolated call."""
    rgb = imageio.decode_photo(image, max_pixels)
    if label is None:
        return rgb, None
    try:
        return rgb, imageio.decode_label_png(label, max_pixels)
    except imageio.BadInput as exc:
        return rgb, exc.reason


def _label_problem(label_ids: np.ndarray, rgb: np.ndarray, label_set: LabelSet) -> str | None:
    if label_ids.shape != rgb.shape[:2]:
        return f"is {label_ids.shape[1]}x{label_ids.shape[0]}, the image is {rgb.shape[1]}x{rgb.shape[0]}"
    unknown = label_set.unknown_label_ids(label_ids)
    return f"has unknown label ids {unknown[:10]}" if unknown else None


DECODE_BATCH_IMAGES = 32  # images per round trip to the helper: the per-trip cost spread thin
DECODE_BATCH_PIXELS = 1 << 22  # and at most ~4 Mpx decoded at once (12 MB RGB): large frames go 1-2 a trip


class EncodedInputs(NamedTuple):
    """One image's files, read and header-checked, not yet decoded."""

    item: WorkItem
    data: bytes
    label_data: bytes | None
    label_error: str | None  # why the ground truth could not be read
    pixels: int  # height x width from the header: what decoding it will allocate


def read_inputs(item: WorkItem, max_pixels: int) -> EncodedInputs:
    """Read one image (+ ground truth) and check its header; raises BadInput with a reason,
    OSError when the image cannot be read."""
    data = fs.read_bytes(item.path)
    height, width = imageio.check_photo_header(data, max_pixels)  # bombs refused before any decoder
    label_data, label_error = None, None
    if item.label_path:
        try:
            label_data = fs.read_bytes(item.label_path)
        except OSError as exc:
            label_error = f"unreadable ({exc})"
    return EncodedInputs(item, data, label_data, label_error, height * width)


def _example(inputs: EncodedInputs, decoded: tuple[np.ndarray, np.ndarray | str | None],
             label_set: LabelSet) -> ImageExample:  # fmt: skip
    rgb, label = decoded
    item, label_error, gt = inputs.item, inputs.label_error, None
    if isinstance(label, str):
        label_error = label
    elif label is not None:
        label_error = _label_problem(label, rgb, label_set)
        gt = None if label_error else label_set.to_train_ids(label)
    return ImageExample(item, rgb, gt, label_error and f"ground truth {item.label_path}: {label_error}")


def load_example(item: WorkItem, max_pixels: int, isolate: bool = True, label_set: LabelSet | None = None) -> ImageExample:
    """Read and validate one image (+ ground truth, labelIds of ``label_set``: the model's,
    Cityscapes when None); raises BadInput with a reason, OSError when the image cannot be read,
    isolation.NativeCrash when a decoder crashed on it."""
    inputs = read_inputs(item, max_pixels)
    args = (inputs.data, inputs.label_data, max_pixels)
    decoded = isolation.call(deadletter.DECODE, item.path, decode_pair, *args) if isolate else decode_pair(*args)
    return _example(inputs, decoded, label_set or cityscapes())


def decode_examples(batch: Sequence[EncodedInputs], max_pixels: int,
                    label_set: LabelSet | None = None) -> list[ImageExample | Exception]:  # fmt: skip
    """Decode a batch of read images in one round trip to the isolated helper; per image its
    example or what :func:`load_example` would have raised (BadInput, isolation.NativeCrash for
    the image a decoder crashed on, ...): one image's failure never costs the others."""
    jobs = [(inputs.item.path, (inputs.data, inputs.label_data, max_pixels)) for inputs in batch]
    results: list[ImageExample | Exception] = []
    for inputs, outcome in zip(batch, isolation.call_each(deadletter.DECODE, decode_pair, jobs), strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):  # KeyboardInterrupt and the like are not one image's
                raise outcome
            results.append(outcome)
            continue
        try:
            results.append(_example(inputs, outcome, label_set or cityscapes()))
        except Exception as exc:  # noqa: BLE001 - as load_example's caller would see it, for this image
            results.append(exc)
    return results


class DecodeBatcher:
    """Collects read images into batches for :func:`decode_examples` (up to
    DECODE_BATCH_IMAGES images or DECODE_BATCH_PIXELS pixels; one image over the pixel budget
    goes alone). Each image travels with a caller's ``tag`` (the decode stage keeps its window
    and timestamp there) and comes back as (tag, example or exception), in the order added."""

    def __init__(self, max_pixels: int, label_set: LabelSet | None = None) -> None:
        self._max_pixels = max_pixels
        self._label_set = label_set
        self._pending: list[tuple[EncodedInputs, Any]] = []
        self._pixels = 0

    def add(self, inputs: EncodedInputs, tag: Any) -> list[tuple[Any, ImageExample | Exception]]:
        """Queue one image; the decoded batch when this one filled it, else nothing."""
        self._pending.append((inputs, tag))
        self._pixels += inputs.pixels
        full = len(self._pending) >= DECODE_BATCH_IMAGES or self._pixels >= DECODE_BATCH_PIXELS
        return self.flush() if full else []

    def flush(self) -> list[tuple[Any, ImageExample | Exception]]:
        """Decode what is queued."""
        batch, self._pending, self._pixels = self._pending, [], 0
        if not batch:
            return []
        outcomes = decode_examples([inputs for inputs, _ in batch], self._max_pixels, self._label_set)
        return [(tag, outcome) for (_, tag), outcome in zip(batch, outcomes, strict=True)]
