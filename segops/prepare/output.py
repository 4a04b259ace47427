"""The output directory of `segops prepare`: where the shards go, removing what a killed run left
(temporaries) before the pipeline starts and an earlier run's manifest and shards before any
input is read, and finishing a run (stats.json,
class_weights.json, dead_letter.jsonl, then manifest.json: a manifest means a complete run).

The JSON files keep prepare's one-space indentation."""

from __future__ import annotations

from typing import Any

from segops.core import fs, layout
from segops.core.deadletter import to_line
from segops.core.fs import delete, exists, join, match, split, write_bytes_atomic, write_json_atomic
from segops.prepare.manifest import RunInfo, build_manifest

JSON_INDENT = 1


def shard_prefix(output: str, part: str) -> str:
    """What WriteToTFRecord gets as its path prefix for ``part``: OUT/<split>/<split> (fine,
    image-only) or OUT/coarse/<split>/<split>."""
    return join(output, part, layout.part_split(part))


def shard_paths(output: str, part: str, num_shards: int) -> list[str]:
    """The files WriteToTFRecord writes for ``part`` (OUT/<part>/<split>-SSSSS-of-NNNNN.tfrecord)."""
    name = layout.part_split(part)
    return [join(output, part, layout.shard_name(name, i, num_shards)) for i in range(num_shards)]


def remove_leftovers(output: str) -> list[str]:
    """Runs on the driver before the pipeline starts (so never under this run's own sinks): remove
    the temporaries a killed or failed run left in OUT and OUT/<split>/ (``*.tmp-*`` files, Beam's
    ``beam-temp-*`` shard directories); returns them. One prepare at a time per OUT."""
    return fs.remove_temporaries([output, join(output, "*")])


def clean_output(output: str) -> list[str]:
    """Runs before any input is read: remove manifest.json (the directory counts as incomplete
    until this run writes a new one) and the shards of earlier runs (any shard count); returns
    the shards removed, sorted.

    Why not let the sink overwrite: Beam's FileBasedSink skips renaming a shard when a file of the
    same name and *size* exists (size is the local "checksum"), and then leaves it out of the
    names it reports; removing old shards first makes every shard this run's own.
    """
    manifest = join(output, layout.MANIFEST_FILE)
    if exists(manifest):
        delete([manifest])
    old = []
    coarse = match(join(output, layout.COARSE_PARTS_DIR, "*", layout.shard_glob("*")))
    for path in match(join(output, "*", layout.shard_glob("*"))) + coarse:
        parent, name = split(path)
        if name.startswith(split(parent)[1] + "-"):  # OUT/<split>/<split>-...
            old.append(path)
    if old:
        delete(old)
    return old


def finalize(info: RunInfo, stats: dict[str, Any], class_weights: dict[str, Any], dead: list[dict[str, str]],
             records: dict[str, int], removed: list[str]) -> dict[str, Any]:  # fmt: skip
    """Write stats.json, class_weights.json, dead_letter.jsonl, then manifest.json (once every
    shard is in place; RuntimeError naming any missing); return the manifest."""
    out = info.options.output
    dead = sorted(dead, key=lambda d: (d["path"], d["stage"], d["reason"]))
    write_json_atomic(join(out, layout.STATS_FILE), stats, indent=JSON_INDENT)
    write_json_atomic(join(out, layout.CLASS_WEIGHTS_FILE), class_weights, indent=JSON_INDENT)
    write_bytes_atomic(join(out, layout.DEAD_LETTER_FILE), "".join(to_line(d) + "\n" for d in dead).encode())
    shards = {s: shard_paths(out, s, info.shards[s]) for s in info.splits}
    missing = [path for paths in shards.values() for path in paths if not exists(path)]
    if missing:
        raise RuntimeError(f"shards missing after the write: {missing}")
    manifest = build_manifest(info, dead, shards, records, removed)
    write_json_atomic(join(out, layout.MANIFEST_FILE), manifest, indent=JSON_INDENT)
    return manifest
