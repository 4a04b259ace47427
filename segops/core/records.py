"""The TFRecord Example schema: the one place that writes and parses prepared records.

``segops prepare`` writes records with :func:`encode_example`; training reads them with
:func:`parse_example_tf` (inside tf.data) and tests/tools with :func:`decode_example` (numpy).
Changing a feature here means bumping :data:`SCHEMA_VERSION`; ``segops train`` refuses prepared
directories whose manifest names another version.

Features (one ``tf.train.Example`` per image):

=====================  =======  ==============================================================
key                    type     content
=====================  =======  ==============================================================
image/encoded          bytes    the source camera PNG, byte for byte (never re-encoded)
image/format           bytes    ``png`` (or ``jpeg``)
image/height           int64    pixels
image/width            int64    pixels
image/source           bytes    source image path, relative to the input root
image/city             bytes    Cityscapes city (first part of the frame id)
image/frame_id         bytes    ``<city>_<seq>_<frame>``
image/split            bytes    ``train`` / ``val`` / ``test`` / ...
label/encoded          bytes    8-bit PNG of trainIds (0..18, 255 = ignore)
weight/encoded         bytes    per-pixel weight map: zlib(float16 little-endian, H*W), or
                                empty when prepare ran with ``--no-weight-maps``
label/annotation       bytes    ``fine`` (gtFine) / ``coarse`` (gtCoarse) / ``none`` (image-only);
                                only in runs with coarse annotations (absent: ``fine``)
=====================  =======  ==============================================================

``label/annotation`` is optional, so records without it (every fine-only run, and every run
before it existed) are byte for byte what they were and read as ``fine``; readers of schema
version 1 that do not know it ignore it. It therefore needs no new :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
ANNOTATION_KEY = "label/annotation"
DEFAULT_ANNOTATION = "fine"  # what a record without ANNOTATION_KEY holds
NO_ANNOTATION = "none"  # the kind of an image-only record (all-ignore label)
WEIGHT_DTYPE = np.dtype("<f2")
WEIGHT_ZLIB_LEVEL = 1  # weight maps are smooth and mostly flat; level 1 is the size/speed sweet spot


@dataclass(frozen=True)
class ExampleFields:
    image_png: bytes
    label_png: bytes
    height: int
    width: int
    source: str
    city: str
    frame_id: str
    split: str
    weight_map: np.ndarray | None = None  # float32/float16 (H, W) or None
    image_format: str = "png"
    annotation: str | None = None  # fine | coarse | none; None: no ANNOTATION_KEY (reads as fine)


def encode_weight_map(weights: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(weights, dtype=WEIGHT_DTYPE).tobytes(), WEIGHT_ZLIB_LEVEL)


def decode_weight_map(data: bytes, height: int, width: int) -> np.ndarray | None:
    if not data:
        return None
    return np.frombuffer(zlib.decompress(data), dtype=WEIGHT_DTYPE).reshape(height, width).astype(np.float32)


def encode_example(fields: ExampleFields) -> bytes:
    """Serialize one prepared image as a ``tf.train.Example``."""
    from tensorflow.core.example import example_pb2, feature_pb2

    def b(value: bytes) -> feature_pb2.Feature:
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value]))

    def i(value: int) -> feature_pb2.Feature:
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[value]))

    weight = b"" if fields.weight_map is None else encode_weight_map(fields.weight_map)
    feature = {
        "image/encoded": b(fields.image_png),
        "image/format": b(fields.image_format.encode()),
        "image/height": i(fields.height),
        "image/width": i(fields.width),
        "image/source": b(fields.source.encode()),
        "image/city": b(fields.city.encode()),
        "image/frame_id": b(fields.frame_id.encode()),
        "image/split": b(fields.split.encode()),
        "label/encoded": b(fields.label_png),
        "weight/encoded": b(weight),
    }
    if fields.annotation is not None:
        feature[ANNOTATION_KEY] = b(fields.annotation.encode())
    example = example_pb2.Example(features=feature_pb2.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def decode_example(serialized: bytes) -> dict[str, Any]:
    """Parse a record in numpy (for tests, tools and inference over prepared data)."""
    from tensorflow.core.example import example_pb2

    from segops.core.imageio import decode_label_png, decode_rgb_image

    ex = example_pb2.Example.FromString(serialized)
    f = ex.features.feature

    def s(key: str) -> bytes:
        return f[key].bytes_list.value[0]

    height = int(f["image/height"].int64_list.value[0])
    width = int(f["image/width"].int64_list.value[0])
    return {
        "image": decode_rgb_image(s("image/encoded"), max_pixels=height * width),
        "image_png": s("image/encoded"),
        "label": decode_label_png(s("label/encoded"), max_pixels=height * width),
        "weight": decode_weight_map(s("weight/encoded"), height, width),
        "height": height,
        "width": width,
        "source": s("image/source").decode(),
        "city": s("image/city").decode(),
        "frame_id": s("image/frame_id").decode(),
        "split": s("image/split").decode(),
        "format": s("image/format").decode(),
        "annotation": s(ANNOTATION_KEY).decode() if ANNOTATION_KEY in f else DEFAULT_ANNOTATION,
    }


def feature_spec() -> dict[str, Any]:
    import tensorflow as tf

    string = tf.io.FixedLenFeature([], tf.string, default_value="")
    int64 = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    return {
        "image/encoded": string,
        "image/format": string,
        "image/height": int64,
        "image/width": int64,
        "image/source": string,
        "image/city": string,
        "image/frame_id": string,
        "image/split": string,
        "label/encoded": string,
        "weight/encoded": string,
        ANNOTATION_KEY: tf.io.FixedLenFeature([], tf.string, default_value=DEFAULT_ANNOTATION),
    }


def parse_example_tf(serialized: Any, with_weights: bool = True) -> dict[str, Any]:
    """Parse one serialized Example inside a tf.data pipeline.

    Returns ``image`` uint8 (H, W, 3), ``label`` uint8 (H, W), and ``weight`` float32 (H, W)
    when ``with_weights`` (ones where the record carries no weight map), plus ``frame_id`` and
    ``annotation`` (``fine`` where the record has no ``label/annotation``).
    """
    import tensorflow as tf

    f = tf.io.parse_single_example(serialized, feature_spec())
    height = tf.cast(f["image/height"], tf.int32)
    width = tf.cast(f["image/width"], tf.int32)
    image = tf.io.decode_png(f["image/encoded"], channels=3)
    label = tf.io.decode_png(f["label/encoded"], channels=1)[:, :, 0]
    image = tf.ensure_shape(image, [None, None, 3])
    out = {"image": image, "label": label, "frame_id": f["image/frame_id"], "annotation": f[ANNOTATION_KEY]}
    if with_weights:
        raw = f["weight/encoded"]

        def decode() -> Any:
            flat = tf.io.decode_raw(tf.io.decode_compressed(raw, compression_type="ZLIB"), tf.float16)
            return tf.reshape(tf.cast(flat, tf.float32), [height, width])

        out["weight"] = tf.cond(
            tf.strings.length(raw) > 0, decode, lambda: tf.ones([height, width], tf.float32)
        )
    return out
