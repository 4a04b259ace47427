"""The damaged files the pipeline tests feed segops (prepare's and infer's dead-letter tests use
the same ones): each builds the bytes of one kind of bad input from a good image or a size."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png(arr: np.ndarray) -> bytes:
    """An RGB (or single-channel, or 16-bit) array as PNG bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 and arr.shape[2] == 3 else arr)
    assert ok
    return buf.tobytes()


def jpeg(rgb: np.ndarray) -> bytes:
    """JPEG bytes (what a JPEG saved under a .png name holds)."""
    ok, buf = cv2.imencode(".jpg", rgb)
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(data: bytes) -> list[bytes]:
    """Split a PNG after its signature into whole chunks (length, type, data, CRC)."""
    out, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        end = pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos:end])
        pos = end
    return out


def crc_broken(data: bytes) -> bytes:
    """8 bytes zeroed in the middle of the compressed data: a chunk CRC no longer matches."""
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 8] = bytes(8)
    return bytes(damaged)


def bomb_png(width: int, height: int) -> bytes:
    """A header claiming width x height RGB pixels and one tiny IDAT: decoding would allocate it all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def bomb_jpeg(width: int, height: int) -> bytes:
    """A JPEG frame header claiming width x height pixels and no image data."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"
