"""`segops prepare` as an Apache Beam pipeline: the raw Cityscapes layout -> sharded TFRecords,
statistics and class weights. The work itself lives in :mod:`segops.prepare`; this module is the
graph and its DoFns. Reads top to bottom::

    (driver)           remove the temporaries a killed run left (remove_leftovers)
    CleanOutput        remove manifest.json and earlier shards (before any input is read)
    ListPairs          the driver hands over the input root; workers list it by pattern, pair the
                       files per frame id, count pairs and bytes per part and fingerprint the files
                       used (workflows/prepare_listing.py; problems -> dead letter)
    RunInfo            parts, shards per part, weights split, fingerprint (singleton side input)
    pairs
      | Analyze        per image: validate the image PNG from its structure only (never decoded),
      |                decode the label, labelId -> trainId LUT, class pixel counts, encode the
      |                trainId PNG, U-Net border term (sparse; needs no class weights) -> Prepared;
      |                bad input -> dead letter
      | ClassStats     CombineFn over the labelled splits -> stats (singleton)
      | ClassWeights   stats of the weights split -> all three schemes (singleton)
      | Route          key by part; with weight maps, attach the class weights (side input, same run)
      | Write          Beam's TFRecord sink with coder=ExampleCoder, shard counts from RunInfo
                       (workflows/prepare_shards.py): OUT/<split>/<split>-SSSSS-of-NNNNN.tfrecord
      | Finalize       stats.json, class_weights.json, dead_letter.jsonl, then manifest.json
                       (last: a manifest means a complete run)

Why the Example is built by the sink's coder. Writing a fixed shard count groups the
input by shard (a shuffle). Shuffling finished records moves every image's bytes through the
runner: on the DirectRunner in multi_processing mode the runner process spent as much CPU per
1024x2048 record as the worker did, which capped 2 workers at ~1x of 1, and the in-memory
shuffle held the whole output in RAM. So the shuffle carries only the small parts (trainId PNG,
sparse border term, class weights, metadata: ~1-10% of a record) and :class:`ExampleCoder` --
the sink's ``coder``, applied to each element as it is written -- reads the image bytes (checked
against the length and a digest taken in Analyze), adds the weight map and calls
``segops.core.records.encode_example``. Each image file is therefore read twice (validate, then copy).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np

from segops.core import deadletter, layout
from segops.core.fs import join, read_json
from segops.datasets.cityscapes import Pair
from segops.prepare.analyze import Prepared, Rejected, analyze_pair, encode_record, keep_large_buffers_on_heap
from segops.prepare.class_weights import class_weight_lut, make_class_weights
from segops.prepare.manifest import RunInfo, run_info
from segops.prepare.options import PrepareOptions
from segops.prepare.output import clean_output, finalize, remove_leftovers
from segops.prepare.stats import ClassStatsFn, to_stats
from workflows.prepare_listing import list_pairs
from workflows.prepare_shards import WriteShards

# --- per-element steps -------------------------------------------------------------------------


class AnalyzeFn(beam.DoFn):
    """Pair -> Prepared (main output) or a dead-letter dict (tagged ``deadletter.TAG``)."""

    def __init__(self, options: PrepareOptions) -> None:
        self.options = options

    def setup(self) -> None:
        keep_large_buffers_on_heap()

    def process(self, pair: Pair):
        try:
            yield analyze_pair(pair, self.options)
        except Rejected as bad:
            yield deadletter.tagged(bad.path, bad.stage, bad.reason, split=pair.part)


class RouteFn(beam.DoFn):
    """Prepared -> (part, (Prepared, class weights of the chosen scheme or None))."""

    def __init__(self, options: PrepareOptions) -> None:
        self.options = options

    def process(self, item: Prepared, class_weights: dict[str, Any] | None = None):
        weights = None
        if class_weights is not None and item.labelled:
            weights = tuple(class_weights["schemes"][self.options.weight_scheme])
        yield item.part, (item, weights)


class ExampleCoder(beam.coders.Coder):
    """WriteToTFRecord's coder: (Prepared, class weights) -> serialized ``tf.train.Example``.

    Runs where the shard is written, after the shuffle (see the module docstring):
    :func:`segops.prepare.analyze.encode_record` re-reads the image bytes, checks them against
    Analyze's length and digest, builds the weight map and encodes the record. An image that
    changed or vanished mid-run fails the run (rerun it): the record would no longer match what
    was validated and counted.
    """

    def __init__(self) -> None:
        self._lut_key: tuple[float, ...] | None = None
        self._lut: np.ndarray | None = None

    def encode(self, value: tuple[Prepared, tuple[float, ...] | None]) -> bytes:
        keep_large_buffers_on_heap()  # a coder has no setup(); the writer may be another process
        item, class_weights = value
        if class_weights is None:
            return encode_record(item, None)
        if class_weights != self._lut_key:  # one scheme per run: build the LUT once
            self._lut_key, self._lut = class_weights, class_weight_lut(class_weights)
        return encode_record(item, self._lut)

    def decode(self, encoded: bytes):
        raise NotImplementedError("ExampleCoder only writes; read records with segops.core.records")

    def is_deterministic(self) -> bool:
        return True


def finalize_step(_, info: RunInfo, stats, class_weights, dead, written, records, removed) -> dict[str, Any]:
    """Finalize with its side inputs; ``written`` (the sinks' outputs) only orders this step
    after every shard is final."""
    del written
    return finalize(info, stats, class_weights, list(dead), dict(records), removed)


# --- the pipeline ------------------------------------------------------------------------------


class PrepareOutputs(NamedTuple):
    info: beam.PCollection  # singleton RunInfo: the parts, shard counts, weights split, fingerprint
    records: beam.PCollection  # (part, (Prepared, class weights)): what the shard writer encodes
    stats: beam.PCollection  # singleton dict
    class_weights: beam.PCollection  # singleton dict
    dead_letters: beam.PCollection  # dicts {"path","stage","reason","split"}
    manifest: beam.PCollection  # singleton dict, written last


def build_prepare_pipeline(p: beam.Pipeline, options: PrepareOptions) -> PrepareOutputs:
    """Add the prepare transforms to ``p``. Lists nothing here: workers list the input (an
    unusable one fails the run with DiscoveryError, before anything is written)."""
    from apache_beam.pvalue import AsDict, AsList, AsSingleton

    removed = (
        p
        | "Start" >> beam.Create([None])
        | "CleanOutput" >> beam.Map(lambda _, output: clean_output(output), options.output)
    )
    listed = list_pairs(removed, options)
    plan = AsSingleton(listed.plan)
    info = (
        listed.plan
        | "RunInfo" >> beam.Map(run_info, options, AsDict(listed.sizes), AsSingleton(listed.fingerprint),
                                AsSingleton(listed.problems | "CountProblems" >> beam.combiners.Count.Globally()))
    )  # fmt: skip
    analyzed = listed.pairs | "Analyze" >> beam.ParDo(AnalyzeFn(options)).with_outputs(deadletter.TAG, main="prepared")
    prepared = analyzed.prepared

    stats = (
        prepared
        | "ClassStats" >> beam.CombineGlobally(ClassStatsFn(options.labels.num_classes))
        | "StatsOfParts" >> beam.Map(
            lambda acc, plan: to_stats(acc, plan.splits, list(plan.unlabeled_splits), options.labels), plan)
    )
    class_weights = stats | "ClassWeights" >> beam.Map(
        lambda s, info: make_class_weights(s, info.weights_split, options.weight_scheme), AsSingleton(info))
    route = beam.ParDo(RouteFn(options), AsSingleton(class_weights)) if options.weight_maps \
        else beam.ParDo(RouteFn(options))  # fmt: skip
    records = prepared | "Route" >> route

    written = records | "Write" >> WriteShards(options.output, info, ExampleCoder())
    record_counts = records | "PartOfRecord" >> beam.Map(lambda kv: kv[0]) | "RecordCounts" >> beam.combiners.Count.PerElement()
    dead = (listed.problems, analyzed[deadletter.TAG]) | "DeadLetters" >> beam.Flatten()
    manifest = (
        p
        | "Once" >> beam.Create([None])
        | "Finalize" >> beam.Map(finalize_step, AsSingleton(info), AsSingleton(stats), AsSingleton(class_weights),
                                 AsList(dead), AsList(written), AsDict(record_counts), AsSingleton(removed))  # fmt: skip
    )
    return PrepareOutputs(info, records, stats, class_weights, dead, manifest)


def run_prepare(options: PrepareOptions, beam_args: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Build and run the pipeline; return the manifest as written (read back from OUT)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    remove_leftovers(options.output)  # a killed run's temporaries; its shards go in CleanOutput
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as p:
        build_prepare_pipeline(p, options)
    return read_json(join(options.output, layout.MANIFEST_FILE))
