"""`segops prepare` as an Apache Beam pipeline: the raw Cityscapes layout -> sharded TFRecords,
statistics and class weights. The work itself lives in :mod:`segops.prepare`; this module is the
graph and its DoFns. Reads top to bottom::

    (driver)           remove the temporaries a killed run left (remove_leftovers)
    CleanOutput        remove manifest.json and earlier shards (before any input is read)
    pairs (listed with FileSystems.match at construction; problems -> dead letter)
      | Analyze        per image: validate the image PNG from its structure only (never decoded),
      |                decode the label, labelId -> trainId LUT, class pixel counts, encode the
      |                trainId PNG, U-Net border term (sparse; needs no class weights) -> Prepared;
      |                bad input -> dead letter
      | ClassStats     CombineFn over the labelled splits -> stats (singleton)
      | ClassWeights   stats of the weights split -> all three schemes (singleton)
      | Route          per split; with weight maps, attach the class weights (side input, same run)
      | WriteToTFRecord(coder=ExampleCoder)   OUT/<split>/<split>-SSSSS-of-NNNNN.tfrecord
      | Finalize       stats.json, class_weights.json, dead_letter.jsonl, then manifest.json
                       (last: a manifest means a complete run)

Why the Example is built by the sink's coder. WriteToTFRecord with a fixed shard count groups its
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
from segops.datasets.cityscapes import Listing, Pair, discover
from segops.prepare.analyze import Prepared, Rejected, analyze_pair, encode_record, keep_large_buffers_on_heap
from segops.prepare.class_weights import class_weight_lut, make_class_weights
from segops.prepare.manifest import RunInfo
from segops.prepare.options import PrepareOptions, resolve_weights_split, shard_counts
from segops.prepare.output import clean_output, finalize, remove_leftovers, shard_prefix
from segops.prepare.stats import ClassStatsFn

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


def split_tag(split: str) -> str:
    return f"split:{split}"


def label(part: str) -> str:
    """A part in a transform label: ``/`` separates Beam's nested transform names."""
    return part.replace("/", ":")


class RouteFn(beam.DoFn):
    """Prepared -> (Prepared, class weights of the chosen scheme or None), tagged with its split."""

    def __init__(self, options: PrepareOptions) -> None:
        self.options = options

    def process(self, item: Prepared, class_weights: dict[str, Any] | None = None):
        weights = None
        if class_weights is not None and item.labelled:
            weights = tuple(class_weights["schemes"][self.options.weight_scheme])
        yield beam.pvalue.TaggedOutput(split_tag(item.part), (item, weights))


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
    listing: Listing
    records: dict[str, beam.PCollection]  # split -> (Prepared, class weights): what each shard writer encodes
    stats: beam.PCollection  # singleton dict
    class_weights: beam.PCollection  # singleton dict
    dead_letters: beam.PCollection  # dicts {"path","stage","reason","split"}
    manifest: beam.PCollection  # singleton dict, written last


def build_prepare_pipeline(p: beam.Pipeline, options: PrepareOptions, listing: Listing | None = None) -> PrepareOutputs:
    """Add the prepare transforms to ``p``. Lists the input now (DiscoveryError if unusable)."""
    from apache_beam.io.tfrecordio import WriteToTFRecord
    from apache_beam.pvalue import AsDict, AsList, AsSingleton

    if listing is None:
        listing = discover(options.input, options.splits or None, options.unlabeled_splits, options.annotation_kinds)
    weights_split = resolve_weights_split(options, listing)
    splits, unlabeled = listing.splits, listing.unlabeled_splits
    shards = shard_counts(options, listing)

    removed = (
        p
        | "Start" >> beam.Create([None])
        | "CleanOutput" >> beam.Map(lambda _, output: clean_output(output), options.output)
    )
    pairs = (
        p
        | "ListedPairs" >> beam.Create(listing.pairs)
        | "AfterCleanOutput" >> beam.Map(lambda pair, _: pair, AsSingleton(removed))
    )
    listed_problems = p | "ListingProblems" >> beam.Create([pr.to_dict() for pr in listing.problems])
    analyzed = pairs | "Analyze" >> beam.ParDo(AnalyzeFn(options)).with_outputs(deadletter.TAG, main="prepared")
    prepared = analyzed.prepared

    stats = prepared | "ClassStats" >> beam.CombineGlobally(ClassStatsFn(splits, unlabeled))
    class_weights = stats | "ClassWeights" >> beam.Map(make_class_weights, weights_split, options.weight_scheme)

    route = beam.ParDo(RouteFn(options), AsSingleton(class_weights)) if options.weight_maps \
        else beam.ParDo(RouteFn(options))  # fmt: skip
    routed = prepared | "Route" >> route.with_outputs(*[split_tag(s) for s in splits])

    records, written, counts = {}, [], []
    for s in splits:
        records[s] = routed[split_tag(s)]
        written.append(
            records[s]
            | f"Write[{label(s)}]" >> WriteToTFRecord(shard_prefix(options.output, s), coder=ExampleCoder(),
                                               file_name_suffix=layout.SHARD_SUFFIX, num_shards=shards[s],
                                               shard_name_template=layout.SHARD_TEMPLATE)
        )  # fmt: skip
        counts.append(records[s] | f"Count[{label(s)}]" >> beam.combiners.Count.Globally()
                      | f"Key[{label(s)}]" >> beam.Map(lambda n, s=s: (s, n)))  # fmt: skip

    dead = (listed_problems, analyzed[deadletter.TAG]) | "DeadLetters" >> beam.Flatten()
    written_paths = written | "Shards" >> beam.Flatten()
    record_counts = counts | "RecordCounts" >> beam.Flatten()
    info = RunInfo(options, listing.root, splits, unlabeled, shards, weights_split, listing.fingerprint,
                   listing.files, len(listing.pairs), listing.skipped)  # fmt: skip
    manifest = (
        p
        | "Once" >> beam.Create([None])
        | "Finalize" >> beam.Map(finalize_step, info, AsSingleton(stats), AsSingleton(class_weights), AsList(dead),
                                 AsList(written_paths), AsDict(record_counts), AsSingleton(removed))  # fmt: skip
    )
    return PrepareOutputs(listing, records, stats, class_weights, dead, manifest)


def run_prepare(options: PrepareOptions, beam_args: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Build and run the pipeline; return the manifest as written (read back from OUT)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    listing = discover(options.input, options.splits or None, options.unlabeled_splits, options.annotation_kinds)
    resolve_weights_split(options, listing)  # fail before starting any worker
    remove_leftovers(options.output)  # a killed run's temporaries; its shards go in CleanOutput
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as p:
        build_prepare_pipeline(p, options, listing)
    return read_json(join(options.output, layout.MANIFEST_FILE))
