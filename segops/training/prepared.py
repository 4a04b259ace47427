"""The ``segops prepare`` directory as training sees it: everything that can be wrong with it,
checked before any model is built (:func:`check_prepared` -> :class:`PreparedData`), and the class
weights picked from its class_weights.json (:func:`resolve_class_weights`). Also the one JSON
reader of the training stage (:func:`read_json`: errors worded as :class:`TrainError`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from segops.core import fs, layout, records
from segops.core.label_sets import LabelSet, LabelSetError, cityscapes, recorded_label_set
from segops.prepare.class_weights import DEFAULT_SCHEME
from segops.training.options import DEFAULT_CLASS_WEIGHTS, NO_CLASS_WEIGHTS, TrainError, TrainOptions

log = logging.getLogger(__name__)


def read_json(path: str, what: str) -> Any:
    """Parsed JSON file; TrainError naming ``what`` when it cannot be read or parsed."""
    try:
        return fs.read_json(path)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot read {what} {path}: {exc}") from exc


@dataclass(frozen=True)
class PreparedData:
    train_files: list[str]  # the fine train split's shards (empty when only coarse ones are read)
    val_files: list[str]
    train_records: int | None  # as recorded by prepare; None: unknown (counted by reading)
    has_weight_maps: bool | None  # None: unknown
    class_weights: dict[str, Any] | None  # class_weights.json
    coarse_files: list[str] = field(default_factory=list)  # shards of the coarse parts trained on
    coarse_records: int | None = None  # as recorded by prepare; None: unknown
    label_set: LabelSet = field(default_factory=cityscapes)  # the manifest's; Cityscapes for older ones


def manifest_count(manifest: dict[str, Any], stats: dict[str, Any], split: str) -> int | None:
    """Record count of ``split`` as recorded by prepare (manifest counts or stats.json)."""
    candidates = [manifest.get("splits", {}).get(split), stats.get("splits", {}).get(split)]
    for entry in candidates:
        if isinstance(entry, int):
            return entry
        if isinstance(entry, dict):
            for key in ("records", "written", "images", "ok"):
                if isinstance(entry.get(key), int):
                    return entry[key]
    return None


def manifest_weight_maps(manifest: dict[str, Any]) -> bool | None:
    """Whether prepare wrote weight maps (manifest "weight_maps": {"enabled": ...}); None if unknown."""
    maps = manifest.get("weight_maps")
    if isinstance(maps, dict) and isinstance(maps.get("enabled"), bool):
        return maps["enabled"]
    option = manifest.get("options", {}).get("weight_maps")
    return option if isinstance(option, bool) else None


def check_prepared(opts: TrainOptions) -> PreparedData:
    """Everything that can fail about the input, checked before any model is built."""
    root, data = opts.prepared, opts.data
    if not os.path.isdir(root):
        raise TrainError(f"prepared directory {root} does not exist: run `segops prepare` first")
    manifest_path = os.path.join(root, layout.MANIFEST_FILE)
    if not os.path.exists(manifest_path):
        raise TrainError(
            f"{root} has no {layout.MANIFEST_FILE}: it is not (or not yet) a `segops prepare` output"
        )
    manifest = read_json(manifest_path, "manifest")
    version = manifest.get("schema_version")
    if version != records.SCHEMA_VERSION:
        raise TrainError(
            f"{root} was prepared with record schema version {version}; this segops reads version "
            f"{records.SCHEMA_VERSION}: run `segops prepare` again with this version"
        )
    try:
        label_set = recorded_label_set(manifest.get("label_set"), manifest_path)
    except LabelSetError as exc:
        raise TrainError(str(exc)) from exc
    stats_path = os.path.join(root, layout.STATS_FILE)
    stats = read_json(stats_path, "statistics") if os.path.exists(stats_path) else {}
    from segops.training.input_pipeline import shard_paths  # tf.io.gfile: lists without starting the runtime

    mix = opts.annotations
    train_files = shard_paths(root, data.train_split) if mix.uses_fine else []
    val_files = shard_paths(root, data.val_split)
    needed = ((data.train_split, train_files),) if mix.uses_fine else ()
    for split, files in (*needed, (data.val_split, val_files)):
        if not files:
            raise TrainError(
                f"{root}/{split}/ holds no {split}-*-of-*{layout.SHARD_SUFFIX} shards: nothing to train on"
            )
    train_records = manifest_count(manifest, stats, data.train_split) if mix.uses_fine else 0
    if train_records == 0 and mix.uses_fine:
        raise TrainError(f"{root}: the {data.train_split} split has no records")
    coarse_files, coarse_records = coarse_shards(root, opts, manifest, stats) if mix.uses_coarse else ([], 0)

    has_maps = manifest_weight_maps(manifest)
    if data.weight_maps and has_maps is False:
        raise TrainError(
            f"--weight-maps asked for, but {root} was prepared without weight maps: prepare again "
            "with weight maps or pass --no-weight-maps"
        )
    class_weights = None
    cw_path = os.path.join(root, layout.CLASS_WEIGHTS_FILE)
    if os.path.exists(cw_path):
        class_weights = read_json(cw_path, "class weights")
    if opts.optim.class_weights != NO_CLASS_WEIGHTS and class_weights is None:
        raise TrainError(
            f"class weights {opts.optim.class_weights!r} asked for, but {root} has no "
            f"{layout.CLASS_WEIGHTS_FILE}: run `segops prepare` again or pass --class-weights none"
        )
    return PreparedData(train_files, val_files, train_records, has_maps, class_weights, coarse_files, coarse_records,
                        label_set)  # fmt: skip


def coarse_shards(root: str, opts: TrainOptions, manifest: dict[str, Any],
                  stats: dict[str, Any]) -> tuple[list[str], int | None]:  # fmt: skip
    """(shards, records or None if unknown) of the coarse parts of ``--coarse-splits`` that were
    prepared; TrainError when there are none."""
    from segops.training.input_pipeline import shard_paths

    parts = [layout.part_name(s, layout.COARSE) for s in opts.annotations.coarse_splits]
    found = {part: shard_paths(root, part) for part in parts}
    found = {part: files for part, files in found.items() if files}
    if not found:
        raise TrainError(
            f"coarse annotations asked for (--coarse-ratio/--coarse-epochs), but {root} has no shards in "
            f"{', '.join(p + '/' for p in parts)}: run `segops prepare --annotations fine+coarse`"
        )
    counts = [manifest_count(manifest, stats, part) for part in found]
    records = None if any(c is None for c in counts) else sum(c for c in counts if c is not None)
    if records == 0:
        raise TrainError(f"{root}: the coarse parts {', '.join(found)} have no records")
    return sorted(f for files in found.values() for f in files), records


def resolve_class_weights(opts: TrainOptions, data: PreparedData) -> tuple[str, list[float] | None]:
    """(scheme name, one weight per class of the label set, or None); "default" is
    class_weights.json's default_scheme."""
    scheme = opts.optim.class_weights
    if scheme == NO_CLASS_WEIGHTS:
        return NO_CLASS_WEIGHTS, None
    assert data.class_weights is not None
    if scheme == DEFAULT_CLASS_WEIGHTS:
        scheme = data.class_weights.get("default_scheme", DEFAULT_SCHEME)
    if opts.data.weight_maps:
        log.warning("class weights %s are applied on top of the weight maps, which already include a class term", scheme)
    weights = data.class_weights.get("schemes", {}).get(scheme)
    num_classes = data.label_set.num_classes
    if not isinstance(weights, list) or len(weights) != num_classes:
        raise TrainError(f"{layout.CLASS_WEIGHTS_FILE} has no {num_classes}-value scheme {scheme!r}")
    power = opts.optim.class_weight_power
    # a class absent from the training split keeps weight 0 (0 ** 0 would make it 1)
    return scheme, [float(w) ** power if w > 0 else 0.0 for w in weights]


def first_image_size(files: list[str]) -> tuple[int, int] | None:
    """(height, width) of the first readable record of ``files`` (prepare writes every image
    of a split at its own size; the first one stands for the split), None when none is readable."""
    import tensorflow as tf

    from segops.training import input_pipeline as ip

    reader = ip.ShardReader(ip.CorruptRecords())
    for path in files:
        for serialized in reader(path):
            feature = tf.train.Example.FromString(serialized).features.feature
            return int(feature["image/height"].int64_list.value[0]), int(feature["image/width"].int64_list.value[0])
    return None
