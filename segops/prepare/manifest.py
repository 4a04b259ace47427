"""The manifest.json of a prepare run: what produced the directory (options, code and schema
versions, input fingerprint), per split its records, dead letters and shards, the dead letters
by kind, and how the class weights and weight maps were made. Built here without I/O;
:func:`segops.prepare.output.finalize` writes it, last."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from segops import __version__
from segops.core.deadletter import reason_kind
from segops.core.fs import relpath
from segops.core.layout import part_annotation
from segops.core.records import NO_ANNOTATION, SCHEMA_VERSION
from segops.datasets.cityscapes import Plan, no_pairs_error
from segops.prepare.options import PrepareOptions, resolve_weights_split, shard_counts
from segops.prepare.weight_maps import BORDER_TOLERANCE, effective_sigma


@dataclass(frozen=True)
class RunInfo:
    """What the manifest needs from the listing (picklable; the pipeline makes it on a worker)."""

    options: PrepareOptions
    root: str
    splits: list[str]
    unlabeled: list[str]
    shards: dict[str, int]
    weights_split: str | None
    fingerprint: str
    files: int
    pairs: int
    skipped: dict[str, str]


def run_info(plan: Plan, options: PrepareOptions, sizes: dict[str, tuple[int, int]], digest: tuple[str, int],
             listing_problems: int) -> RunInfo:  # fmt: skip
    """The RunInfo of a listed input: ``sizes`` part -> (pairs, image bytes), ``digest`` the
    (fingerprint, files used); DiscoveryError when nothing was found, OptionsError for a
    ``--weights-split`` that is not a labelled part."""
    if not sizes and not listing_problems:
        raise no_pairs_error(plan.root, plan)
    splits, unlabeled = plan.splits, list(plan.unlabeled_splits)
    weights_split = resolve_weights_split(options, splits, unlabeled)
    pairs = sum(n for n, _ in sizes.values())
    return RunInfo(options, plan.root, splits, unlabeled, shard_counts(options, splits, sizes), weights_split,
                   digest[0], digest[1], pairs, plan.skipped)  # fmt: skip


def build_manifest(info: RunInfo, dead: list[dict[str, str]], shards: dict[str, list[str]],
                   records: dict[str, int], removed: list[str]) -> dict[str, Any]:  # fmt: skip
    """The manifest of a finished run: ``dead`` its dead letters (sorted), ``shards`` split -> the
    shard paths written, ``records`` split -> records written, ``removed`` the shard paths that
    existed before the run."""
    out = info.options.output
    current = {path for paths in shards.values() for path in paths}
    o = info.options
    return {
        "schema_version": SCHEMA_VERSION,
        "segops_version": __version__,
        "stage": "prepare",
        "input": info.root,
        "output": out,
        "options": o.to_dict(),
        "label_set": o.labels.to_json(),
        "annotations": o.annotations,
        "pairs": info.pairs,
        "splits": {
            s: {
                "labeled": s not in info.unlabeled,
                "annotation": NO_ANNOTATION if s in info.unlabeled else part_annotation(s),
                "records": int(records.get(s, 0)),
                "dead_lettered": sum(1 for d in dead if d["split"] == s),
                "num_shards": info.shards[s],
                "shards": [relpath(path, out) for path in shards[s]],
            }  # fmt: skip
            for s in info.splits
        },
        "skipped_splits": info.skipped,
        "dead_letter": {
            "total": len(dead),
            "by_reason": dict(sorted(Counter(reason_kind(d["reason"]) for d in dead).items())),
            "by_stage": dict(sorted(Counter(d["stage"] for d in dead).items())),
        },
        "class_weights": {"source_split": info.weights_split, "scheme": o.weight_scheme},
        "weight_maps": {
            "enabled": o.weight_maps,
            "scheme": o.weight_scheme if o.weight_maps else None,
            "w0": o.w0,
            "sigma": o.sigma,
            "sigma_reference_height": o.sigma_reference_height,
            "sigma_rule": "sigma px" if not o.sigma_reference_height
            else f"sigma * height / {o.sigma_reference_height} px (e.g. "
                 f"{effective_sigma(o.sigma, 1024, o.sigma_reference_height):g} px at height 1024)",
            "border_tolerance": BORDER_TOLERANCE,
            "ignore_weight": 0.0,
            "instances": "gtFine instanceIds (ids >= 1000) when present, else 8-connected components "
                         "of thing classes in the labelIds",
            "encoding": "zlib(float16 little-endian, H*W); empty for unlabeled splits and --no-weight-maps",
        },  # fmt: skip
        "label_encoding": "8-bit PNG of trainIds (0..18, 255 = ignore)",
        "removed_stale_shards": [relpath(path, out) for path in removed if path not in current],
        "fingerprint": {"sha256": info.fingerprint, "files": info.files,
                        "of": "sorted '<path relative to input>\\t<size>' lines of the listed inputs"},  # fmt: skip
    }
