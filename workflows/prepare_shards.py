"""The shard writer of the prepare graph: (part, record) -> OUT/<part>/<split>-SSSSS-of-NNNNN.tfrecord,
with the parts and shard counts a side input (the pipeline counts them; WriteToTFRecord wants them
at construction). Reads::

    info | Parts | InitializeWrite          per part: Beam's TFRecord sink makes its beam-temp-* directory
    records | KeyByShard | ByShard | WriteShards      one temporary file per (part, shard)
    InitializeWrite | FinalizeWrite(temps)  per part: empty shards for the rest, rename into place

Beam's own sink does the file work (temporary directory, TFRecord framing, rename, removing the
temporaries), so shards are what WriteToTFRecord writes. Which shard a record goes to is a hash
of its source path, and a shard holds its records in (city, frame id) order: the same files on
every run and runner (WriteToTFRecord deals records out from a random start).
"""

from __future__ import annotations

import uuid
import zlib
from typing import Any

import apache_beam as beam
from apache_beam.io.tfrecordio import _TFRecordSink  # Beam's TFRecord FileBasedSink (no public name)
from apache_beam.pvalue import AsDict, AsMultiMap, AsSingleton

from segops.core import layout
from segops.prepare.manifest import RunInfo
from segops.prepare.output import shard_prefix


def make_sink(output: str, part: str, num_shards: int, coder: beam.coders.Coder) -> _TFRecordSink:
    """The sink WriteToTFRecord(shard_prefix, coder, .tfrecord, num_shards, -SSSSS-of-NNNNN) uses."""
    from apache_beam.io.filesystem import CompressionTypes

    return _TFRecordSink(shard_prefix(output, part), coder, layout.SHARD_SUFFIX, num_shards,
                         layout.SHARD_TEMPLATE, CompressionTypes.AUTO)  # fmt: skip


def shard_of(source: str, num_shards: int) -> int:
    return zlib.crc32(source.encode()) % num_shards


def temp_uid(index: int) -> str:
    """A temporary file's name: unique (a retried bundle writes a new one), sorting by shard
    index (the sink's finalize names shards in the sorted order of its temporaries)."""
    return f"{index:05d}-{uuid.uuid4().hex}"


class WriteShardFn(beam.DoFn):
    """((part, shard index), records) -> (part, (shard index, temporary file))."""

    def __init__(self, output: str, coder: beam.coders.Coder) -> None:
        self.output, self.coder = output, coder

    def process(self, element, temp_dirs: dict[str, str], info: RunInfo):
        (part, index), values = element
        sink = make_sink(self.output, part, info.shards[part], self.coder)
        writer = sink.open_writer(temp_dirs[part], temp_uid(index))
        for value in sorted(values, key=lambda v: (v[0].city, v[0].frame_id)):
            writer.write(value)
        yield part, (index, writer.close())


def finalize_part(element: tuple[str, str], output: str, coder: beam.coders.Coder,
                  temps: dict[str, list[tuple[int, str]]], info: RunInfo):  # fmt: skip
    """Rename one part's temporaries into place, after writing empty files for its shards
    without records; yields the final shard paths."""
    part, temp_dir = element
    num_shards = info.shards[part]
    sink = make_sink(output, part, num_shards, coder)
    written = dict(temps[part])  # a MultiMap: [] for a part without records
    for index in range(num_shards):
        if index not in written:
            written[index] = sink.open_writer(temp_dir, temp_uid(index)).close()
    results = [written[index] for index in range(num_shards)]
    pre_finalize = sink.pre_finalize(temp_dir, results)
    yield from list(sink.finalize_write(temp_dir, results, pre_finalize))


class WriteShards(beam.PTransform):
    """(part, (Prepared, class weights)) -> the final shard paths of every part in ``info``
    (singleton RunInfo: its splits and shard counts)."""

    def __init__(self, output: str, info: beam.PCollection, coder: beam.coders.Coder) -> None:
        super().__init__()
        self.output, self.info, self.coder = output, info, coder

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        output, coder, info = self.output, self.coder, AsSingleton(self.info)
        temp_dirs = (
            self.info
            | "Parts" >> beam.FlatMap(lambda i: i.splits)
            | "InitializeWrite" >> beam.Map(
                lambda part, i: (part, make_sink(output, part, i.shards[part], coder).initialize_write()), info)
        )  # fmt: skip
        temps = (
            records
            | "KeyByShard" >> beam.Map(_key_by_shard, info)
            | "ByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShardFn(output, coder), AsDict(temp_dirs), info)
        )
        return temp_dirs | "FinalizeWrite" >> beam.FlatMap(finalize_part, output, coder, AsMultiMap(temps), info)


def _key_by_shard(element: tuple[str, Any], info: RunInfo) -> tuple[tuple[str, int], Any]:
    part, value = element
    return (part, shard_of(value[0].source, info.shards[part])), value
