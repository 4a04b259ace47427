"""tf.data input pipeline over the shards written by ``segops prepare``.

Elements are ``(images, targets)``: ``images`` float32 (N, H, W, 3) in 0..255 and ``targets``
float32 (N, H, W, 2) = [trainId (255 = ignore), per-pixel weight] (the packed form that
segops.losses and segops.metrics accept). Records are parsed only with
:func:`segops.records.parse_example_tf`.

Training data order is a pure function of ``(seed, epoch)``: the shard order, the record shuffle
and every random augmentation parameter derive from stateless seeds folded from them, so a run
resumed at epoch k sees exactly the batches an uninterrupted run would.

Corrupt records: shards are framed with Python's reader (:class:`ShardReader`) that checks the
TFRecord length and data CRCs itself. A record whose data CRC fails is skipped, a truncated
record or a corrupt length header ends that shard (nothing after it can be located); each such
place is logged once as a warning and counted (:class:`CorruptRecords`), and the epoch goes on.
A record that passes its CRCs but still fails to decode (a prepare bug, not disk corruption) is
dropped by ``ignore_errors`` with TensorFlow's own warning.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from segops import records
from segops.labels import IGNORE_ID

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
# Luma weights (ITU-R BT.601) for the saturation jitter.
_LUMA = (0.299, 0.587, 0.114)


# --- reading shards ------------------------------------------------------------------------------


def shard_paths(prepared_dir: str, split: str) -> list[str]:
    """Sorted shard files ``<prepared_dir>/<split>/<split>-*-of-*.tfrecord`` (any FileSystem TF reads)."""
    return sorted(tf.io.gfile.glob(f"{prepared_dir.rstrip('/')}/{split}/{split}-*-of-*.tfrecord"))


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class CorruptRecords:
    """Thread-safe log of corrupt places in shards: each (shard, offset) is warned about and
    counted once, however many epochs read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int], str] = {}

    def add(self, path: str, offset: int, reason: str) -> None:
        with self._lock:
            if (path, offset) in self._seen:
                return
            self._seen[(path, offset)] = reason
        log.warning("skipping corrupt record in %s at byte %d: %s", path, offset, reason)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._seen)

    def entries(self) -> list[dict[str, object]]:
        with self._lock:
            return [{"path": p, "offset": o, "reason": r} for (p, o), r in sorted(self._seen.items())]


class ShardReader:
    """Generator of serialized records of one TFRecord shard that skips corrupt ones."""

    def __init__(self, corrupt: CorruptRecords) -> None:
        self.corrupt = corrupt

    def __call__(self, path: bytes | str) -> Iterator[bytes]:
        path = path.decode() if isinstance(path, bytes) else path
        offset = 0
        with tf.io.gfile.GFile(path, "rb") as f:
            while True:
                header = f.read(12)
                if not header:
                    return
                if len(header) < 12:
                    self.corrupt.add(path, offset, "truncated record header at the end of the shard")
                    return
                (length,) = struct.unpack("<Q", header[:8])
                if _masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
                    self.corrupt.add(path, offset, "bad length checksum; the rest of the shard is skipped")
                    return
                data = f.read(length)
                footer = f.read(4)
                if len(data) < length or len(footer) < 4:
                    self.corrupt.add(path, offset, "truncated record at the end of the shard")
                    return
                if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                    self.corrupt.add(path, offset, "bad data checksum")
                else:
                    yield data
                offset += 16 + length


def read_records(files: tf.Tensor | Sequence[str], reader: ShardReader, cycle_length: int = 4) -> tf.data.Dataset:
    """Serialized records of ``files``, interleaved over ``cycle_length`` shards read in parallel
    (deterministic order)."""
    spec = tf.TensorSpec([], tf.string)
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda path: tf.data.Dataset.from_generator(reader, output_signature=spec, args=(path,)),
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=cycle_length,
        deterministic=True,
    )


def decode(serialized: tf.Tensor, with_weights: bool) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(image uint8 (H, W, 3), label uint8 (H, W), weight float32 (H, W); ones without maps)."""
    ex = records.parse_example_tf(serialized, with_weights=with_weights)
    label = ex["label"]
    weight = ex["weight"] if with_weights else tf.ones(tf.shape(label), tf.float32)
    return ex["image"], label, weight


def pack(image: tf.Tensor, label: tf.Tensor, weight: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    targets = tf.stack([tf.cast(label, tf.float32), tf.cast(weight, tf.float32)], axis=-1)
    return tf.cast(image, tf.float32), targets


# --- augmentation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation. ``scale_range``: the prepared image is rescaled by a factor
    drawn log-uniformly in this range before the crop; ``brightness`` is a fraction of 255,
    ``contrast`` and ``saturation`` are +- factors around 1 (0 disables each)."""

    crop: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    brightness: float = 0.125
    contrast: float = 0.25
    saturation: float = 0.25


def _uniform(key: tf.Tensor, lo: float | tf.Tensor = 0.0, hi: float | tf.Tensor = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed=key, minval=lo, maxval=hi, dtype=tf.float32)


def _int_in(key: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
    """Uniform int in [lo, hi] (inclusive)."""
    return lo + tf.cast(tf.floor(_uniform(key) * tf.cast(hi - lo + 1, tf.float32)), tf.int32)


def augment(
    image: tf.Tensor, label: tf.Tensor, weight: tf.Tensor, key: tf.Tensor, cfg: AugmentConfig
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Random scale + crop to ``cfg.crop``, horizontal flip, photometric jitter.

    Geometry is applied identically to image, label and weight map. Instead of resizing the
    whole image and cropping, the window of the *source* that maps onto the crop is cut first
    and only that window is resized (cost independent of the scale). Parts of the window outside
    the image are padded: image 0, label ignore (255), weight 0. Labels and weights are resized
    with nearest neighbour, so no interpolated label value (e.g. between a class and 255) exists.
    """
    ch, cw = cfg.crop
    keys = tf.random.experimental.stateless_split(key, 7)
    lo, hi = cfg.scale_range
    scale = tf.exp(_uniform(keys[0], math.log(lo), math.log(hi))) if hi > lo else tf.constant(lo, tf.float32)
    h, w = tf.shape(label)[0], tf.shape(label)[1]
    win_h = tf.maximum(tf.cast(tf.round(ch / scale), tf.int32), 1)
    win_w = tf.maximum(tf.cast(tf.round(cw / scale), tf.int32), 1)
    # Window top-left in source coordinates; negative / past-the-end where the window is larger.
    y0 = _int_in(keys[1], tf.minimum(0, h - win_h), tf.maximum(0, h - win_h))
    x0 = _int_in(keys[2], tf.minimum(0, w - win_w), tf.maximum(0, w - win_w))
    ys, xs = tf.maximum(y0, 0), tf.maximum(x0, 0)
    ye, xe = tf.minimum(y0 + win_h, h), tf.minimum(x0 + win_w, w)
    pads = [[ys - y0, y0 + win_h - ye], [xs - x0, x0 + win_w - xe]]

    def cut(t: tf.Tensor, pad_value: float | int) -> tf.Tensor:
        window = t[ys:ye, xs:xe]
        extra = [[0, 0]] * (len(t.shape) - 2)
        return tf.pad(window, pads + extra, constant_values=tf.cast(pad_value, t.dtype))

    image = tf.image.resize(cut(image, 0), (ch, cw), method="bilinear")
    label = tf.image.resize(cut(label, IGNORE_ID)[..., None], (ch, cw), method="nearest")[..., 0]
    weight = tf.image.resize(cut(weight, 0.0)[..., None], (ch, cw), method="nearest")[..., 0]

    if cfg.flip:
        flip = _uniform(keys[3]) < 0.5
        image, label, weight = tf.cond(
            flip,
            lambda: (image[:, ::-1], label[:, ::-1], weight[:, ::-1]),
            lambda: (image, label, weight),
        )
    if cfg.saturation > 0:
        gray = tf.reduce_sum(image * tf.constant(_LUMA, tf.float32), axis=-1, keepdims=True)
        image = gray + (image - gray) * _uniform(keys[4], 1 - cfg.saturation, 1 + cfg.saturation)
    if cfg.contrast > 0:
        mean = tf.reduce_mean(image)
        image = (image - mean) * _uniform(keys[5], 1 - cfg.contrast, 1 + cfg.contrast) + mean
    if cfg.brightness > 0:
        image = image + 255.0 * _uniform(keys[6], -cfg.brightness, cfg.brightness)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([ch, cw, 3])
    label.set_shape([ch, cw])
    weight.set_shape([ch, cw])
    return image, label, weight


# --- datasets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineConfig:
    batch_size: int
    with_weights: bool = False
    shuffle_buffer: int = 64  # serialized records (the shuffle happens before decoding)
    cycle_length: int = 4  # shards read in parallel
    num_parallel_calls: int = AUTOTUNE  # parallel decode + augment
    threads: int | None = None  # private tf.data thread pool size (None: TF's default)


def _options(cfg: PipelineConfig) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    # Shards are assigned to workers by the caller (train.py); tf.distribute must not re-shard a
    # generator-based dataset.
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    if cfg.threads:
        opts.threading.private_threadpool_size = cfg.threads
        opts.threading.max_intra_op_parallelism = 1
    return opts


def _fold(key: tf.Tensor, value: tf.Tensor | int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))


def block_shuffle(ds: tf.data.Dataset, block: int, key: tf.Tensor) -> tf.data.Dataset:
    """Shuffle within consecutive blocks of ``block`` elements with a stateless permutation per
    block (``Dataset.shuffle`` cannot take a per-epoch seed tensor when a global seed is set)."""

    def permute(i: tf.Tensor, items: tf.Tensor) -> tf.data.Dataset:
        perm = tf.argsort(tf.random.stateless_uniform([tf.size(items)], seed=_fold(key, i)))
        return tf.data.Dataset.from_tensor_slices(tf.gather(items, perm))

    return ds.batch(block).enumerate().flat_map(permute)


def train_dataset(
    files: Sequence[str],
    aug: AugmentConfig,
    cfg: PipelineConfig,
    *,
    seed: int,
    steps_per_epoch: int,
    initial_epoch: int,
    epochs: int,
    num_records: int,
    corrupt: CorruptRecords | None = None,
) -> tf.data.Dataset:
    """Augmented training batches for epochs ``initial_epoch .. epochs-1``, ``steps_per_epoch``
    batches each (drop remainder; within an epoch the split is read again, in a new order, when
    it has fewer than ``steps_per_epoch * batch_size`` records). ``num_records`` (records in
    ``files``) bounds the passes per epoch, so a split that turns out to be entirely corrupt ends
    the input (Keras stops with a warning) instead of looping forever."""
    if not files or num_records <= 0:
        raise ValueError("no training records")
    passes = math.ceil(steps_per_epoch * cfg.batch_size / num_records) + 1
    reader = ShardReader(corrupt or CorruptRecords())
    files_t = tf.constant(list(files))
    root = tf.constant([seed, 0x5E60], tf.int64)

    def one_pass(epoch_key: tf.Tensor, index: tf.Tensor) -> tf.data.Dataset:
        key = _fold(epoch_key, index)
        order = tf.argsort(tf.random.stateless_uniform([tf.size(files_t)], seed=key))
        return block_shuffle(read_records(tf.gather(files_t, order), reader, cfg.cycle_length), cfg.shuffle_buffer, key)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        epoch_key = _fold(root, epoch)
        aug_key = _fold(epoch_key, -1)
        examples = tf.data.Dataset.range(passes).flat_map(lambda i: one_pass(epoch_key, i))

        def load(index: tf.Tensor, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            image, label, weight = decode(serialized, cfg.with_weights)
            return pack(*augment(image, label, weight, _fold(aug_key, index), aug))

        examples = examples.enumerate().map(load, num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
        examples = examples.ignore_errors(log_warning=True)
        return examples.batch(cfg.batch_size, drop_remainder=True).take(steps_per_epoch)

    # Cardinality stays unknown on purpose: Keras then keeps one iterator across epochs
    # (steps_per_epoch is given to fit), so epoch e of the stream is exactly epoch e of training.
    ds = tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)
    return ds.prefetch(AUTOTUNE).with_options(_options(cfg))


def pad_to_multiple(
    images: tf.Tensor, targets: tf.Tensor, stride: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pad a batch at the bottom/right so H and W are multiples of ``stride``; padded pixels are
    ignore (label 255, weight 0) so they never count."""
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    ph, pw = (-h) % stride, (-w) % stride
    images = tf.pad(images, [[0, 0], [0, ph], [0, pw], [0, 0]])
    label = tf.pad(targets[..., 0], [[0, 0], [0, ph], [0, pw]], constant_values=float(IGNORE_ID))
    weight = tf.pad(targets[..., 1], [[0, 0], [0, ph], [0, pw]])
    return images, tf.stack([label, weight], axis=-1)


def eval_dataset(
    files: Sequence[str],
    cfg: PipelineConfig,
    *,
    size: tuple[int, int] | None = None,
    stride: int = 1,
    corrupt: CorruptRecords | None = None,
) -> tf.data.Dataset:
    """Validation batches, in shard order, no augmentation. ``size``: resize every image to
    (H, W) (bilinear; labels and weights nearest), else keep the prepared size. Batches are
    padded (ignore) to a multiple of ``stride``; images of different sizes are padded to the
    largest in their batch."""
    if not files:
        raise ValueError("no validation shards")
    reader = ShardReader(corrupt or CorruptRecords())

    def load(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, label, weight = decode(serialized, cfg.with_weights)
        if size is not None:
            image = tf.image.resize(image, size, method="bilinear")
            label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
            weight = tf.image.resize(weight[..., None], size, method="nearest")[..., 0]
        return pack(image, label, weight)

    ds = read_records(list(files), reader, cfg.cycle_length)
    ds = ds.map(load, num_parallel_calls=cfg.num_parallel_calls, deterministic=True).ignore_errors(log_warning=True)
    ds = ds.padded_batch(
        cfg.batch_size,
        padded_shapes=([None, None, 3], [None, None, 2]),
        padding_values=(0.0, float(IGNORE_ID)),  # weight channel is padded with 255 too, but
    )  # those pixels are ignore, so their weight never counts
    if stride > 1:
        ds = ds.map(lambda x, y: pad_to_multiple(x, y, stride))
    return ds.prefetch(AUTOTUNE).with_options(_options(cfg))


def count_records(files: Sequence[str], corrupt: CorruptRecords | None = None) -> int:
    """Number of readable records (reads every shard once; used only when no manifest says it)."""
    reader = ShardReader(corrupt or CorruptRecords())
    return sum(1 for path in files for _ in reader(path))


def as_numpy_batches(ds: tf.data.Dataset) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for x, y in ds:
        yield x.numpy(), y.numpy()
