"""The per-pair work of `segops prepare`, as plain functions a DoFn (or a test, or a benchmark)
calls: read and validate the camera PNG from its structure only (never decoded), decode the
label, map labelIds -> trainIds and count the classes, compute the sparse U-Net border term
(:func:`analyze_pair` -> :class:`Prepared`); later, where the shard is written, re-read the
image, check it is the one validated, and encode the ``tf.train.Example``
(:func:`encode_record`). Bad input raises :class:`Rejected` with the dead letter's path, stage
and reason."""

from __future__ import annotations

import functools
from typing import NamedTuple

import cv2
import numpy as np

from segops.core import deadletter
from segops.core.fs import read_bytes
from segops.core.imageio import (
    BadInput,
    PngHeader,
    camera_png_header,
    check_png_chunks,
    decode_instance_png,
    decode_label_png,
    encode_mask_png,
)
from segops.core.label_sets import LabelSet, cityscapes
from segops.core.labels import IGNORE_ID
from segops.core.layout import FINE
from segops.core.records import NO_ANNOTATION, ExampleFields, encode_example
from segops.datasets.cityscapes import Pair
from segops.prepare.options import PrepareOptions
from segops.prepare.weight_maps import (
    BorderTerm,
    effective_sigma,
    instances_from_ids,
    instances_from_label,
    unet_border_term,
    weight_map,
)


class Prepared(NamedTuple):
    """One analysed image, between Analyze and the shard writer."""

    split: str
    source: str
    city: str
    frame_id: str
    image_path: str
    image_len: int
    image_digest: int  # identity_digest of the bytes validated here; the writer compares it
    height: int
    width: int
    label_png: bytes  # trainIds PNG
    labelled: bool
    pixel_counts: np.ndarray | None  # int64[num_classes of the label set]; None for unlabeled splits
    border: BorderTerm | None
    part: str  # the output part: <split>, or coarse/<split> (segops.core.layout.part_name)
    annotation: str | None  # the record's label/annotation; None in fine-only runs (not written)


class Rejected(Exception):
    """A pair that cannot be prepared: what its dead letter says (path relative to the input)."""

    def __init__(self, path: str, stage: str, reason: str) -> None:
        super().__init__(path, stage, reason)
        self.path, self.stage, self.reason = path, stage, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} ({self.stage})"


def identity_digest(data: bytes) -> int:
    """CRC-32C of the whole file, to notice that it changed between the validating read and the
    copying read. google-crc32c (already required by Beam's TFRecord sink) runs in hardware at
    ~20 GB/s, ~0.2 ms per 3.5 MB frame, so every byte is covered; not a validation
    (segops.core.imageio.check_png_chunks is)."""
    import google_crc32c

    return google_crc32c.value(data)


@functools.cache  # process-wide setting: apply once per process, then a dict lookup
def keep_large_buffers_on_heap(limit: int = 32 << 20) -> bool:
    """Make glibc serve allocations up to ``limit`` bytes from the heap and keep freed memory.

    Every record handles a few multi-megabyte buffers (the image bytes, the protobuf copy, the
    serialized Example). By default glibc maps each such buffer with a fresh ``mmap`` and unmaps
    it on free, so every page is faulted in and zeroed again per record; in the benchmark VM that
    cost ~7 ms per 3.5 MB copy, more than the label work itself, and it varied with the process's
    allocation history (glibc's threshold moves dynamically). A fixed threshold (32 MB, glibc's
    maximum) and a high trim threshold make these buffers reuse heap pages. Process-wide, once per
    worker; a no-op (False) where the C library has no ``mallopt`` (musl, macOS).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, limit) and libc.mallopt(m_trim_threshold, 4 * limit))
    except (OSError, AttributeError):
        return False


# --- Analyze -----------------------------------------------------------------------------------


def record_annotation(pair: Pair, options: PrepareOptions) -> str | None:
    """What the record says in ``label/annotation``: nothing in fine-only runs (their records stay
    what they always were), else the pair's kind, ``none`` for an image-only record."""
    if options.annotation_kinds == (FINE,):
        return None
    return pair.annotation if pair.labelled else NO_ANNOTATION


def analyze_pair(pair: Pair, options: PrepareOptions) -> Prepared:
    """Validate and analyse one pair; :class:`Rejected` (naming the stage) for bad input."""
    stage = deadletter.READ  # where a BadInput came from, for the dead letter
    try:
        image = read_input(pair.image, pair.source)
        stage = deadletter.DECODE
        hdr = camera_png_header(image, options.max_pixels)  # no decode: header, then
        check_png_chunks(image, "image PNG")  # every chunk's CRC
        common = dict(
            split=pair.split,
            source=pair.source,
            city=pair.city,
            frame_id=pair.frame_id,
            image_path=pair.image,
            image_len=len(image),
            image_digest=identity_digest(image),
            height=hdr.height,
            width=hdr.width,
            part=pair.part,
            annotation=record_annotation(pair, options),
        )
        if not pair.labelled:
            blank = blank_label_png(hdr.height, hdr.width)
            return Prepared(label_png=blank, labelled=False, pixel_counts=None, border=None, **common)
        stage = deadletter.LABEL
        label_png, label, counts = analyze_label(pair, hdr, options.max_pixels, options.labels)
        stage = deadletter.INSTANCES
        border = border_term(pair, label, hdr, options) if options.weight_maps else None
        return Prepared(label_png=label_png, labelled=True, pixel_counts=counts, border=border, **common)
    except BadInput as exc:
        raise Rejected(exc.path or pair.source, stage, exc.reason) from exc


@functools.lru_cache(maxsize=16)
def blank_label_png(height: int, width: int) -> bytes:
    """The all-ignore trainId PNG of an image-only record (one per image size, cached)."""
    return encode_mask_png(np.full((height, width), IGNORE_ID, dtype=np.uint8))


def analyze_label(pair: Pair, hdr: PngHeader, max_pixels: int,
                  label_set: LabelSet | None = None) -> tuple[bytes, np.ndarray, np.ndarray]:  # fmt: skip
    """(trainId PNG, labelIds array, trainId pixel counts) of a labelled pair."""
    assert pair.label is not None
    rel_label = relative_to_input(pair.label, pair)
    data = read_input(pair.label, rel_label)
    try:
        label = decode_label_png(data, max_pixels)
    except BadInput as exc:
        raise BadInput(exc.reason, rel_label) from exc
    if label.shape != (hdr.height, hdr.width):
        raise BadInput(
            f"size mismatch: image is {hdr.width}x{hdr.height}, label is {label.shape[1]}x{label.shape[0]}",
            rel_label,
        )
    train_ids, counts = map_and_count(label, rel_label, label_set)
    return encode_mask_png(train_ids), label, counts


def border_term(pair: Pair, label: np.ndarray, hdr: PngHeader, options: PrepareOptions) -> BorderTerm:
    """The U-Net border term of a labelled pair: instances from its instanceIds file when there
    is one, else from the thing classes of its labelIds."""
    if pair.instance is not None:
        rel = relative_to_input(pair.instance, pair)
        data = read_input(pair.instance, rel)
        try:
            ids = decode_instance_png(data, options.max_pixels)
        except BadInput as exc:
            raise BadInput(exc.reason, rel) from exc
        if ids.shape != label.shape:
            raise BadInput(f"size mismatch: instanceIds is {ids.shape[1]}x{ids.shape[0]}, label is "
                           f"{label.shape[1]}x{label.shape[0]}", rel)  # fmt: skip
        instances = instances_from_ids(ids)
    else:
        instances = instances_from_label(label, options.labels.thing_label_ids)
    sigma = effective_sigma(options.sigma, hdr.height, options.sigma_reference_height)
    return unet_border_term(instances, options.w0, sigma)


def read_input(path: str, rel: str) -> bytes:
    """File bytes; an unreadable file (permissions, vanished, network) is bad input, not a crash."""
    try:
        return read_bytes(path)
    except OSError as exc:
        raise BadInput(f"cannot read: {exc}", rel) from exc


def relative_to_input(path: str, pair: Pair) -> str:
    """``path`` relative to the input root, using the image's known relative path as the anchor."""
    root = pair.image[: len(pair.image) - len(pair.source)]
    return path[len(root) :] if root and path.startswith(root) else path


def map_and_count(label_ids: np.ndarray, path: str = "",
                  label_set: LabelSet | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """labelIds -> (trainIds uint8, pixel counts per trainId int64[num_classes]) in ``label_set``
    (Cityscapes when None).

    One 256-bin histogram of the labelIds gives both the unknown-id check and the class counts
    (summed through the LUT), so the image is scanned twice in total: histogram and LUT.
    """
    if label_ids.size < (1 << 24):  # float32 bins are exact below 2^24
        hist = cv2.calcHist([label_ids], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        hist = np.bincount(label_ids.ravel(), minlength=256)
    ls = label_set or cityscapes()
    if hist[~ls.valid_label_id].any():
        bad = ls.unknown_label_ids(label_ids)
        raise BadInput(f"unknown label ids {bad}: not in the {ls.table_title}", path)
    counts = np.bincount(ls.label_to_train, weights=hist, minlength=256)[: ls.num_classes]
    return cv2.LUT(label_ids, ls.label_to_train), counts.astype(np.int64)


# --- the record ----------------------------------------------------------------------------------


def encode_record(item: Prepared, class_weight_lut: np.ndarray | None) -> bytes:
    """The serialized ``tf.train.Example`` of ``item``: the image bytes re-read (RuntimeError
    when they are no longer the ones validated: rerun prepare), the trainId PNG, and with a
    class-weight LUT the U-Net weight map."""
    image = read_bytes(item.image_path)
    if len(image) != item.image_len or identity_digest(image) != item.image_digest:
        raise RuntimeError(f"{item.image_path} changed while the pipeline ran; run prepare again")
    weights = None
    if class_weight_lut is not None:
        train_ids = decode_label_png(item.label_png, item.height * item.width)
        weights = weight_map(train_ids, class_weight_lut, item.border)
    fields = ExampleFields(
        image_png=image,
        label_png=item.label_png,
        height=item.height,
        width=item.width,
        source=item.source,
        city=item.city,
        frame_id=item.frame_id,
        split=item.split,
        weight_map=weights,
        annotation=item.annotation,
    )
    return encode_example(fields)
