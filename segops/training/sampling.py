"""Which serialized records training reads in an epoch, and in what order: the stateless keys
(a pure function of ``(seed, epoch)``), shards read interleaved and shuffled in blocks
(:func:`read_records`), passes over one source of shards (:func:`source_records`), and the mix of
annotation kinds (:func:`epoch_records`).

The mix. With coarse annotations (``segops prepare --annotations fine+coarse``) there are two
sources: the fine train split and the coarse parts (``coarse/train``, ``coarse/train_extra``).
Each training example comes from the coarse source with probability ``r`` and from the fine one
otherwise, drawn per example from a stateless key (``r`` = 1 in the first ``coarse_epochs``
epochs, then ``coarse_ratio``; see :class:`~segops.training.options.AnnotationMix`); each source
keeps its own order, so the stream is still a function of ``(seed, epoch)`` and a resumed run sees
the batches of an uninterrupted one. Without coarse records in the mix the stream is exactly the
fine source's, as before the mix existed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from segops.training.options import AnnotationMix

_ROOT_SALT = 0x5E60  # the training stream's root key is (seed, _ROOT_SALT)
_COARSE_SALT = -2  # folded into an epoch's key: the coarse source's order
_CHOICE_SALT = -3  # folded into an epoch's key: which source each example comes from


def fold(key: tf.Tensor, value: tf.Tensor | int) -> tf.Tensor:
    """A new stateless key from ``key`` and ``value``."""
    return tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))


def epoch_key(seed: int, epoch: tf.Tensor | int) -> tf.Tensor:
    """The key everything random in training epoch ``epoch`` derives from."""
    return fold(tf.constant([seed, _ROOT_SALT], tf.int64), epoch)


Reader = Callable[..., Iterator[bytes]]  # (path, key, block) -> serialized records (input_pipeline.ShardReader)


def read_records(
    files: tf.Tensor | Sequence[str],
    reader: Reader,
    cycle_length: int = 4,
    key: tf.Tensor | None = None,
    block: int = 0,
) -> tf.data.Dataset:
    """Serialized records of ``files``, interleaved over ``cycle_length`` shards read in parallel
    (deterministic order). With ``key`` (a stateless seed), each shard's records are shuffled in
    blocks of ``block`` with a permutation derived from the key and the shard's position."""
    spec = tf.TensorSpec([], tf.string)
    files = tf.data.Dataset.from_tensor_slices(files)
    if key is None:  # no shuffle: the reader yields a shard in file order when block <= 1
        key, block = tf.zeros([2], tf.int64), 0
    return files.enumerate().interleave(
        lambda i, path: tf.data.Dataset.from_generator(
            reader, output_signature=spec, args=(path, fold(key, i), block)
        ),
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=cycle_length,
        deterministic=True,
    )


@dataclass(frozen=True)
class Source:
    """Shards of one kind of training records and how many records they hold."""

    files: tuple[str, ...]
    records: int


def source_records(source: Source, reader: Reader, cfg: Any, key: tf.Tensor, examples: int) -> tf.data.Dataset:
    """Enough passes over ``source`` for ``examples`` records (one more than needed, bounded so
    a source that is all corrupt ends the input), each pass in a new shard order and shuffle
    derived from ``key``. ``cfg``: a PipelineConfig (cycle_length, shuffle_buffer)."""
    passes = math.ceil(examples / source.records) + 1
    files = tf.constant(list(source.files))

    def one_pass(index: tf.Tensor) -> tf.data.Dataset:
        k = fold(key, index)
        order = tf.argsort(tf.random.stateless_uniform([tf.size(files)], seed=k))
        return read_records(tf.gather(files, order), reader, cfg.cycle_length, fold(k, 1), cfg.shuffle_buffer)

    return tf.data.Dataset.range(passes).flat_map(one_pass)


def epoch_records(
    key: tf.Tensor,
    epoch: tf.Tensor | int,
    fine: Source | None,
    coarse: Source | None,
    mix: AnnotationMix,
    reader: Reader,
    cfg: Any,
    examples: int,
) -> tf.data.Dataset:
    """The serialized training records of ``epoch`` (``key`` = :func:`epoch_key`): the fine
    source alone when ``coarse`` is None, the coarse one alone when ``fine`` is None, else each
    example drawn from coarse with probability ``mix.ratio_at(epoch)``. ``examples``: how many
    the epoch needs (each source is read for that many)."""
    if coarse is None:
        assert fine is not None
        return source_records(fine, reader, cfg, key, examples)
    coarse_stream = source_records(coarse, reader, cfg, fold(key, _COARSE_SALT), examples)
    if fine is None:
        return coarse_stream
    fine_stream = source_records(fine, reader, cfg, key, examples)
    ratio = tf.where(tf.cast(epoch, tf.int64) < mix.coarse_epochs, 1.0, float(mix.coarse_ratio))
    choice_key = fold(key, _CHOICE_SALT)
    choices = tf.data.Dataset.counter().map(
        lambda i: tf.cast(tf.random.stateless_uniform([], seed=fold(choice_key, i)) < ratio, tf.int64)
    )
    return tf.data.Dataset.choose_from_datasets([fine_stream, coarse_stream], choices)
