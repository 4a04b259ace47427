"""The listing half of the prepare graph: the driver hands over the input root; workers list the
Cityscapes layout by pattern and pair its files with the rules of
:mod:`segops.datasets.cityscapes`, so the graph does not grow with the input. Reads::

    root | ListingPatterns | SpreadPatterns | List | Classify     listed files (one pattern per top folder)
    listed | SplitsFound | Plan                                  which parts to write (singleton Plan;
                                                                 DiscoveryError when unusable)
    listed | ByFrameId | Resolve(plan)                          pairs; problems -> dead letter; files used
    used | Fingerprint                                          (sha256, files) singleton
    pairs | PartSizes                                           part -> (pairs, image bytes)
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from segops.core import deadletter
from segops.core.fs import match_sized
from segops.datasets.cityscapes import (
    IMAGE,
    LABEL,
    ListedFile,
    Plan,
    annotation_kinds,
    classify,
    fingerprint,
    listing_patterns,
    plan_parts,
    resolve_frame,
)
from segops.prepare.options import PrepareOptions

USED_TAG = "used"


class Listed(NamedTuple):
    plan: beam.PCollection  # singleton Plan
    pairs: beam.PCollection  # Pair
    problems: beam.PCollection  # dead-letter dicts, stage "discover"
    fingerprint: beam.PCollection  # singleton (sha256, files used)
    sizes: beam.PCollection  # (part, (pairs, image bytes))


def input_root(options: PrepareOptions) -> str:
    return options.input.rstrip("/") or "/"


def make_plan(found: list[tuple[str, str, str]], options: PrepareOptions) -> Plan:
    """The Plan from the distinct (role, kind, split) of the listed images and labels."""
    image_splits = {split for role, _, split in found if role == IMAGE}
    label_splits: dict[str, set[str]] = {}
    for role, kind, split in found:
        if role == LABEL:
            label_splits.setdefault(kind, set()).add(split)
    return plan_parts(input_root(options), image_splits, label_splits, annotation_kinds(options.annotation_kinds),
                      options.splits or None, options.unlabeled_splits)  # fmt: skip


class ResolveFn(beam.DoFn):
    """(frame id, its listed files) -> pairs; problems (tagged ``deadletter.TAG``) and the
    (relative path, size) of each file used (tagged ``used``)."""

    def process(self, element: tuple[str, list[ListedFile]], plan: Plan):
        resolved = resolve_frame(plan, list(element[1]))
        yield from resolved.pairs
        for problem in resolved.problems:
            yield beam.pvalue.TaggedOutput(deadletter.TAG, problem.to_dict())
        for entry in resolved.used:
            yield beam.pvalue.TaggedOutput(USED_TAG, entry)


def _add_sizes(values) -> tuple[int, int]:
    pairs = image_bytes = 0
    for n, size in values:
        pairs, image_bytes = pairs + n, image_bytes + size
    return pairs, image_bytes


def list_pairs(start: beam.PCollection, options: PrepareOptions) -> Listed:
    """The listing of ``options.input``, begun when the singleton ``start`` is ready (after
    CleanOutput)."""
    root = input_root(options)
    kinds = annotation_kinds(options.annotation_kinds)
    listed = (
        start
        | "ListingPatterns" >> beam.FlatMap(lambda _: listing_patterns(root, kinds))
        | "SpreadPatterns" >> beam.Reshuffle()
        | "List" >> beam.FlatMap(match_sized)
        | "Classify" >> beam.FlatMap(lambda f: [c] if (c := classify(f[0], f[1], root, kinds)) else [])
    )
    plan = (
        listed
        | "SplitsFound" >> beam.FlatMap(lambda f: [(f.role, f.kind, f.split)] if f.role in (IMAGE, LABEL) else [])
        | "DistinctSplits" >> beam.Distinct()
        | "AllSplits" >> beam.combiners.ToList()
        | "Plan" >> beam.Map(make_plan, options)
    )
    resolved = (
        listed
        | "KeyByFrameId" >> beam.Map(lambda f: (f.frame_id, f))
        | "ByFrameId" >> beam.GroupByKey()
        | "Resolve" >> beam.ParDo(ResolveFn(), AsSingleton(plan)).with_outputs(deadletter.TAG, USED_TAG, main="pairs")
    )
    digest = (
        resolved[USED_TAG]
        | "UsedFiles" >> beam.combiners.ToList()
        | "Fingerprint" >> beam.Map(lambda used: (fingerprint(used), len(used)))
    )
    sizes = (
        resolved.pairs
        | "PairSize" >> beam.Map(lambda pair: (pair.part, (1, pair.image_bytes)))
        | "PartSizes" >> beam.CombinePerKey(_add_sizes)
    )
    return Listed(plan, resolved.pairs, resolved[deadletter.TAG], digest, sizes)

