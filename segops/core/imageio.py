"""Reading, validating and writing images, for every stage.

All file access goes through Beam's ``FileSystems`` so that the same code reads local paths,
``gs://`` or ``s3://`` on a cluster. Validation happens on the encoded bytes *before* decoding
where it can (size from the PNG header), so a decompression bomb is refused without allocating
its pixels. Every failure raises :class:`BadInput` with a reason a person can act on; pipelines
turn it into a dead-letter record.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from isal.isal_zlib import crc32  # zlib's CRC-32 with PCLMUL: ~15x zlib.crc32

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DEFAULT_MAX_PIXELS = 4096 * 4096  # 4x a Cityscapes frame; larger inputs are refused
INFER_MAX_PIXELS = 4096 * 8192  # infer's default: its peak memory is in docs/benchmarks.md


class BadInput(ValueError):
    """An input that cannot be processed; ``reason`` is meant for the dead-letter record."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int  # 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA

    @property
    def channels(self) -> int:
        return {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(self.color_type, 0)


def png_header(data: bytes) -> PngHeader:
    """Parse the IHDR chunk without decoding pixels; raise BadInput if this is not a PNG."""
    if len(data) == 0:
        raise BadInput("empty file (0 bytes)")
    if not data.startswith(PNG_SIGNATURE):
        raise BadInput("not a PNG file (bad signature)")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise BadInput("truncated PNG: no IHDR header")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise BadInput(f"PNG has zero size {width}x{height}")
    return PngHeader(width, height, bit_depth, color_type)


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int  # 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK
    progressive: bool


# start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic)
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def jpeg_header(data: bytes) -> JpegHeader:
    """Walk a JPEG's marker segments up to its frame header (SOF); no pixels decoded."""
    if not data.startswith(JPEG_SIGNATURE):
        raise BadInput("not a JPEG file (bad signature)")
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            raise BadInput(f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 10 > size:
                break
            height, width, components = struct.unpack_from(">HHB", data, pos + 5)
            if width == 0 or height == 0:
                raise BadInput(f"JPEG has zero size {width}x{height}")
            return JpegHeader(width, height, components, marker in _JPEG_PROGRESSIVE)
        pos += 2 + length
    raise BadInput("truncated or corrupt JPEG: no frame header before the image data")


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) as stored (before any EXIF rotation) from a PNG or JPEG header."""
    if data.startswith(PNG_SIGNATURE):
        hdr = png_header(data)
        return hdr.height, hdr.width
    if data.startswith(JPEG_SIGNATURE):
        jpg = jpeg_header(data)
        return jpg.height, jpg.width
    if len(data) == 0:
        raise BadInput("empty file (0 bytes)")
    raise BadInput(f"not a PNG or JPEG file (it starts with {data[:8]!r})")


def check_pixels(height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise BadInput(
            f"image is {width}x{height} = {height * width} pixels, over the limit of {max_pixels} "
            "(raise --max-pixels if this is intended)"
        )


def _decode(data: bytes, flags: int, what: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if arr is None:
        raise BadInput(f"corrupt or truncated {what}: decoder failed")
    return arr


def _check_png_complete(data: bytes, what: str) -> None:
    # libpng may return a partially decoded image for a file cut after its data chunks;
    # a valid PNG always ends with the IEND chunk (12 bytes incl. CRC).
    if data[-12:-8] != b"\x00\x00\x00\x00" or data[-8:-4] != b"IEND":
        raise BadInput(f"truncated {what}: no IEND chunk at the end of the file")


def camera_png_header(data: bytes, max_pixels: int) -> PngHeader:
    """The header of a camera-frame PNG, refusing what a Cityscapes frame never is: grayscale or
    16-bit (almost certainly the wrong file) and sizes over ``max_pixels``. No pixels decoded."""
    hdr = png_header(data)
    check_pixels(hdr.height, hdr.width, max_pixels)
    if hdr.bit_depth != 8:
        raise BadInput(f"image PNG is {hdr.bit_depth}-bit; expected 8-bit RGB")
    if hdr.color_type not in (2, 3, 6):  # RGB, palette, RGBA
        raise BadInput("image PNG is grayscale; expected 8-bit RGB")
    return hdr


_CHUNK_HEAD = struct.Struct(">I4s")  # length, type
_CHUNK_CRC = struct.Struct(">I")


def check_png_chunks(data: bytes, what: str = "PNG") -> None:
    """Walk a PNG's chunks up to IEND, checking each chunk's CRC against its data (one CRC-32
    pass over the file): catches truncation and corruption anywhere in the file."""
    view = memoryview(data)
    head, stored_crc = _CHUNK_HEAD.unpack_from, _CHUNK_CRC.unpack_from
    pos, size, has_data = 8, len(data), False
    while True:  # ~450 chunks in a 3.5 MB frame: struct, not slicing, in this loop
        if pos + 12 > size:
            raise BadInput(f"truncated {what}: the file ends before its IEND chunk")
        length, kind = head(data, pos)
        end = pos + 12 + length
        if end > size:
            raise BadInput(f"truncated {what}: the file ends inside a chunk")
        if crc32(view[pos + 4 : end - 4]) != stored_crc(data, end - 4)[0]:
            raise BadInput(f"corrupt {what}: CRC mismatch in chunk {kind.decode('latin-1')!r}")
        pos = end
        if kind == b"IDAT":
            has_data = True
        elif kind == b"IEND":
            break
    if not has_data:
        raise BadInput(f"corrupt {what}: no image data (IDAT) chunk")


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG before its image data, keyword -> text: ``tEXt`` (Latin-1) and
    uncompressed ``iTXt`` (UTF-8); {} for data that is not a PNG. CRCs are not checked here
    (:func:`check_png_chunks` does that)."""
    if not data.startswith(PNG_SIGNATURE):
        return {}
    head, pos, size, found = _CHUNK_HEAD.unpack_from, 8, len(data), {}
    while pos + 12 <= size:
        length, kind = head(data, pos)
        if kind in (b"IDAT", b"IEND") or pos + 12 + length > size:
            break  # the metadata segops writes comes right after IHDR: the pixels need no walking
        body = data[pos + 8 : pos + 8 + length]
        keyword, _, rest = body.partition(b"\0")
        if kind == b"tEXt":
            found[keyword.decode("latin-1")] = rest.decode("latin-1")
        elif kind == b"iTXt" and rest[:1] == b"\0":  # compression flag 0; then language, translated keyword
            _, _, after_language = rest[2:].partition(b"\0")
            _, _, text = after_language.partition(b"\0")
            found[keyword.decode("latin-1")] = text.decode("utf-8", errors="replace")
        pos += 12 + length
    return found


def with_png_text(data: bytes, texts: dict[str, str]) -> bytes:
    """``data`` (a PNG) with one uncompressed ``iTXt`` chunk (UTF-8 text) per item inserted right
    after IHDR; keywords are 1-79 Latin-1 characters (PNG 1.2, 11.3.4.5). Pixels untouched."""
    png_header(data)
    chunks = []
    for keyword, text in texts.items():
        if not 1 <= len(keyword) <= 79 or "\0" in keyword:
            raise ValueError(f"bad PNG text keyword {keyword!r}")
        body = b"iTXt" + keyword.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8")
        chunks.append(_CHUNK_CRC.pack(len(body) - 4) + body + _CHUNK_CRC.pack(crc32(body)))
    ihdr_end = 8 + 12 + _CHUNK_HEAD.unpack_from(data, 8)[0]
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]


def decode_rgb_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an 8-bit colour image (PNG or JPEG) to RGB uint8 (H, W, 3).

    Refused: empty/non-image/corrupt files, grayscale or 16-bit PNGs, oversized images
    (:func:`camera_png_header`).
    """
    if data.startswith(PNG_SIGNATURE):
        camera_png_header(data, max_pixels)
        _check_png_complete(data, "image PNG")
    else:
        height, width = image_size(data)
        check_pixels(height, width, max_pixels)
    arr = _decode(data, cv2.IMREAD_UNCHANGED, "image")
    if arr.dtype != np.uint8:
        raise BadInput(f"image has dtype {arr.dtype}; expected 8-bit")
    if arr.ndim == 2:
        raise BadInput("image is grayscale; expected RGB")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def check_photo_header(data: bytes, max_pixels: int) -> tuple[int, int]:
    """What :func:`decode_photo` refuses from the header alone (format, 16-bit, size over
    ``max_pixels``: a decompression bomb is refused here, unallocated); returns (height, width)."""
    height, width = image_size(data)
    check_pixels(height, width, max_pixels)
    if data.startswith(PNG_SIGNATURE):
        hdr = png_header(data)
        if hdr.bit_depth == 16:
            raise BadInput("16-bit PNG: convert it to 8 bits first (its tone mapping is the camera's, not ours to guess)")
    elif (components := jpeg_header(data).components) not in (1, 3, 4):
        raise BadInput(f"JPEG with {components} colour components; expected 1, 3 or 4")
    return height, width


def decode_photo(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an archive image for inference to RGB uint8 (H, W, 3), as a viewer shows it.

    Accepted with conversion (docs/formats.md): grayscale (replicated to RGB), palette
    (expanded), RGBA and gray+alpha (alpha ignored, not composited), CMYK JPEG (converted by
    libjpeg), progressive JPEG; an EXIF orientation (JPEG, or a PNG eXIf chunk) is applied, so
    masks line up with what a viewer shows. Refused: :func:`check_photo_header`, and files the
    decoder cannot read in full (PNG chunk CRCs are checked first: truncation anywhere).
    """
    check_photo_header(data, max_pixels)
    if data.startswith(PNG_SIGNATURE):
        check_png_chunks(data, "PNG")
    arr = _decode(data, cv2.IMREAD_COLOR, "image")  # IMREAD_COLOR: EXIF orientation, 3 channels
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_label_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a single-channel 8-bit label PNG (labelIds or trainIds) to uint8 (H, W)."""
    hdr = png_header(data)
    check_pixels(hdr.height, hdr.width, max_pixels)
    if hdr.bit_depth != 8 or hdr.color_type not in (0, 3):
        raise BadInput(
            f"label PNG must be 8-bit single-channel (got bit depth {hdr.bit_depth}, "
            f"{hdr.channels} channel(s))"
        )
    _check_png_complete(data, "label PNG")
    # IMREAD_UNCHANGED keeps palette indices as-is only for grayscale; palette PNGs are
    # expanded by OpenCV, so read them with Pillow, which returns the raw indices.
    if hdr.color_type == 3:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im, dtype=np.uint8).copy()
        except OSError as exc:
            raise BadInput(f"corrupt or truncated label PNG ({exc})") from exc
    return _decode(data, cv2.IMREAD_UNCHANGED, "label PNG")


def decode_instance_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a Cityscapes instanceIds PNG (16-bit, or 32-bit as int32) to int32 (H, W)."""
    hdr = png_header(data)
    check_pixels(hdr.height, hdr.width, max_pixels)
    _check_png_complete(data, "instanceIds PNG")
    arr = _decode(data, cv2.IMREAD_UNCHANGED, "instanceIds PNG")
    if arr.ndim != 2:
        raise BadInput("instanceIds PNG must be single-channel")
    return arr.astype(np.int32)


def encode_png(arr: np.ndarray, compression: int = 1, bgr: bool = False) -> bytes:
    """Encode uint8 gray (H, W), RGB (H, W, 3) (``bgr``: already in OpenCV's BGR order, which
    saves a full-size copy) or uint16 gray as PNG.

    Compression level 1: segmentation masks are mostly flat regions, so level 1 is already
    close to the best size and several times faster than OpenCV's default of 3.
    """
    if arr.ndim == 3 and arr.shape[2] == 3 and not bgr:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


#: OpenCV settings for label/mask PNGs: the "Up" row filter and run-length zlib strategy. Masks
#: are flat regions with vertical edges mostly continuing row to row; this is ~3x faster than
#: OpenCV's default adaptive filtering and gives smaller files (measured on 1024x2048 masks).
MASK_PNG_PARAMS: tuple[int, ...] = (
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
)  # fmt: skip


def encode_mask_png(arr: np.ndarray) -> bytes:
    """Encode a single-channel uint8 mask (labelIds/trainIds) as PNG with :data:`MASK_PNG_PARAMS`."""
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 (H, W), got {arr.dtype} {arr.shape}")
    ok, buf = cv2.imencode(".png", arr, list(MASK_PNG_PARAMS))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
