"""The size of the `segops prepare` pipeline graph against the size of its input (run by hand; not a test).

    .venv/bin/python bench/bench_prepare_graph.py [--sizes 1000,100000] [--work DIR]

For each N, an input tree of N train pairs (hard links to one small image and one label, 1000 per
city directory), then the pipeline is *constructed* over it (never run) and the length of
``pipeline.to_runner_api().SerializeToString()`` and the construction time are printed. The
driver hands the pipeline patterns, so both must stay flat in N. Run it with another checkout
first on PYTHONPATH to measure that checkout's graph (``build_prepare_pipeline(p, options)``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

PER_DIR = 1000
LINKS_PER_BASE = 50_000  # ext4 allows 65000 links per file


def make_tree(root: Path, n: int) -> None:
    """N pairs under root (kept between runs: only missing links are made)."""
    import numpy as np

    from segops.core import layout
    from segops.core.imageio import encode_png

    image = encode_png(np.zeros((16, 32, 3), np.uint8))
    label = encode_png(np.full((16, 32), 7, np.uint8))
    for i in range(n):
        city = f"c{i // PER_DIR:04d}"
        frame = f"{city}_{i:06d}_000019"
        for top, suffix, data in ((layout.IMAGE_DIR, layout.IMAGE_SUFFIX, image),
                                  (layout.LABEL_DIR, layout.LABEL_SUFFIX, label)):  # fmt: skip
            path = root / top / "train" / city / (frame + suffix)
            if path.exists():
                continue
            base = root.parent / f"base-{top}-{i // LINKS_PER_BASE}.png"
            if not base.exists():
                base.write_bytes(data)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(base, path)


def measure(root: Path, out: Path) -> dict[str, float]:
    import apache_beam as beam

    from segops.prepare.options import PrepareOptions
    from workflows.prepare import build_prepare_pipeline

    start = time.perf_counter()
    p = beam.Pipeline()
    build_prepare_pipeline(p, PrepareOptions(input=str(root), output=str(out)))
    built = time.perf_counter() - start
    graph = len(p.to_runner_api().SerializeToString())
    return {"construct_s": round(built, 3), "graph_bytes": graph}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--work", default=None, help="where the trees go (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="segops-prepare-graph-"))
    for n in (int(s) for s in args.sizes.split(",")):
        root = work / f"n{n}" / "data"
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        make_tree(root, n)
        tree_s = time.perf_counter() - start
        print(json.dumps({"pairs": n, "tree_s": round(tree_s, 1), **measure(root, work / f"n{n}" / "out")}), flush=True)


if __name__ == "__main__":
    main()
