"""Label Studio's brush masks: the ``"format": "rle"`` bit stream of its BrushLabels results.

The stream is thi.ng's rle-pack over the mask as a flattened RGBA image (4 bytes per pixel):
a header (32 bits value count, 5 bits word size - 1, four 4-bit run-length field sizes - 1),
then blocks: ``1`` + size index (2 bits) + run length - 1 + one word for a run, or ``0`` + size
index + count - 1 + that many words for literals. Painted pixels have alpha > 0; Label Studio's
own converter (``label_studio_sdk.converter.brush.decode_rle``, reshaped to (H, W, 4), channel 3)
reads them that way. This module writes what the SDK's ``mask2rle`` writes (word size 8, field
sizes 3/4/8/16, the value in all four channels) without the SDK: label-studio-sdk 2.1.2 pins
opencv < 4.13 and pulls ~45 packages (docs/review.md). tests/test_review.py decodes our streams
with the SDK's decoder code and ours with its encoder's output.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
RUN_FIELD_BITS = (3, 4, 8, 16)  # the run-length field sizes label-studio-sdk's mask2rle uses
CHANNELS = 4  # RGBA
ALPHA_THRESHOLD = 128  # a pixel is painted when its alpha is at least this (brush edges blend)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(run lengths, run values) of a 1-D array."""
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths, values[ends]


def encode_rle(values: np.ndarray) -> list[int]:
    """rle-pack bytes of a 1-D uint8 array (one run block per run, as label-studio-sdk does)."""
    bits = [f"{values.size:032b}", f"{WORD_BITS - 1:05b}", *(f"{s - 1:04b}" for s in RUN_FIELD_BITS)]
    max_run = 1 << RUN_FIELD_BITS[-1]
    lengths, run_values = _runs(values) if values.size else (np.zeros(0, np.int64), np.zeros(0, np.uint8))
    for length, value in zip(lengths.tolist(), run_values.tolist(), strict=True):
        word = f"{value:0{WORD_BITS}b}"
        if length == 1:  # a one-word literal block
            bits.append("000" + "0" * RUN_FIELD_BITS[0] + word)
            continue
        while length > 0:
            part = min(length, max_run)
            index = next(k for k, size in enumerate(RUN_FIELD_BITS) if part <= 1 << size)
            bits.append(f"1{index:02b}{part - 1:0{RUN_FIELD_BITS[index]}b}{word}")
            length -= part
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return np.packbits(np.frombuffer(stream.encode(), np.uint8) - ord("0")).tolist()


def decode_rle(rle: list[int]) -> np.ndarray:
    """The uint8 values of an rle-pack stream (any word and field sizes)."""
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    weights: dict[int, np.ndarray] = {}
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if n not in weights:
            weights[n] = 1 << np.arange(n - 1, -1, -1, dtype=np.int64)
        if pos + n > bits.size:
            raise ValueError("brush RLE ends early (truncated or not Label Studio RLE)")
        value = int(bits[pos : pos + n] @ weights[n])
        pos += n
        return value

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, np.uint8)
    i = 0
    while i < count:
        is_run = read(1)
        j = min(count, i + 1 + read(sizes[read(2)]))
        if is_run:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Brush RLE of a boolean (H, W) mask: painted pixels 255 in all four channels."""
    return encode_rle(np.repeat(mask.astype(np.uint8).ravel() * 255, CHANNELS))


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """The painted pixels (alpha >= :data:`ALPHA_THRESHOLD`) of a brush RLE as a bool (H, W) mask."""
    values = decode_rle(rle)
    if values.size != height * width * CHANNELS:
        raise ValueError(f"brush RLE holds {values.size} values, not {height}x{width}x{CHANNELS}")
    return values.reshape(height, width, CHANNELS)[:, :, 3] >= ALPHA_THRESHOLD
