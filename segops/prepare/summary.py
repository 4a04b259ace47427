"""The text `segops prepare` prints after a run: records and dead letters per split, dead
letters by kind, and the class distribution and weights of the weights split."""

from __future__ import annotations

from typing import Any

from segops.core import layout


def summary_text(manifest: dict[str, Any], stats: dict[str, Any], class_weights: dict[str, Any]) -> str:
    """The summary of a run from its manifest.json, stats.json and class_weights.json."""
    lines = [f"read {manifest['pairs']} image(s) with their labels from {manifest['input']}, "
             f"wrote {manifest['output']}"]
    width = max([8, *(len(name) for name in manifest["splits"])])
    for split, s in manifest["splits"].items():
        kind = "" if s["labeled"] else ", image-only (no usable labels)"
        lines.append(f"  {split:<{width}} {s['records']:>7} record(s) in {s['num_shards']} shard(s), "
                     f"{s['dead_lettered']} dead-lettered{kind}")  # fmt: skip
    for split, why in manifest.get("skipped_splits", {}).items():
        lines.append(f"  {split:<{width}} skipped: {why}")
    for kind, a in stats.get("annotations", {}).items():  # runs with coarse annotations
        lines.append(f"{kind} annotations: {a['images']} image(s) in {', '.join(a['splits'])}, "
                     f"{100.0 * a['ignore_pixels'] / max(a['total_pixels'], 1):.1f}% ignore")
    dl = manifest["dead_letter"]
    lines.append(f"dead-lettered: {dl['total']} (see {layout.DEAD_LETTER_FILE})")
    for reason, n in sorted(dl["by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {n:>6}  {reason}")
    source = class_weights.get("source_split")
    scheme = class_weights["default_scheme"]
    s = stats["splits"].get(source) if source else None
    if s and s["total_pixels"]:
        lines.append(f"class distribution ({source}: {s['images']} images, {s['labelled_pixels']} labelled pixels, "
                     f"{100.0 * s['ignore_pixels'] / s['total_pixels']:.1f}% ignore)")  # fmt: skip
        lines.append(f"  {'class':<14} {'share':>7} {'images':>7} {'weight':>9}  ({scheme})")
        labelled = max(s["labelled_pixels"], 1)
        for i, name in enumerate(stats["class_names"]):
            share = 100.0 * s["pixel_counts"][i] / labelled
            w = class_weights["schemes"][scheme][i]
            lines.append(f"  {name:<14} {share:>6.2f}% {s['image_counts'][i]:>7} {w:>9.4f}")
    else:
        lines.append("class distribution: no labelled pixels (no labelled split prepared)")
    return "\n".join(lines)
