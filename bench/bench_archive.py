"""Archive-scale bookkeeping of `segops infer` (run by hand; not a test).

    .venv/bin/python bench/bench_archive.py [--sizes 10000,100000,1000000] [--full-max 10000] [--work DIR]

For each archive size N (hard links to one small PNG under unique paths, 1000 per directory; a
tiny U-Net and ``--no-crf`` so the numbers are bookkeeping, not the network), in one run:

* ``graph``: the serialised pipeline (``pipeline.to_runner_api()``), which must not grow with N;
* ``first``: a full first run (only for N <= --full-max; larger archives get their table seeded
  directly with one row per image, as earlier runs would have left it);
* ``rerun0``: a rerun with nothing new: wall time and peak RSS of the process (the DirectRunner
  executes the pipeline inside it, so this includes the listing and planning work that a cluster
  runs on workers), and the peak RSS of the driver-side steps alone (begin_run, commit,
  summary) in a separate process;
* ``rerun1``: a rerun after adding 1% new images, against the full first run scaled to N;
* ``summary``: the streaming summary over the N-row table.

Each measurement runs in a fresh process. Prints one JSON line per N and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

H, W = 32, 64
PER_DIR = 1000
LINKS_PER_BASE = 50_000


def make_model(work: Path) -> Path:
    import keras

    from segops.core import labels
    from segops.models import build_model, export_dir

    model_dir = work / "model"
    if not (model_dir / "model.json").exists():
        keras.utils.set_random_seed(0)
        export_dir.export_model(build_model("unet", depth=1, base_filters=4), str(model_dir),
                            export_dir.ModelInfo("unet", labels.NUM_CLASSES, (H, W), 4))  # fmt: skip
    return model_dir


def make_archive(root: Path, n: int, start: int = 0) -> None:
    """Images start..n-1 as hard links to a few PNGs (cheap at a million; ext4 allows 65000
    links per file, so one base image per LINKS_PER_BASE images)."""
    import numpy as np

    from segops.core.imageio import encode_png

    for i in range(start, n):
        base = root.parent / f"{root.name}-base{i // LINKS_PER_BASE}.png"
        if not base.exists():
            rng = np.random.default_rng(i // LINKS_PER_BASE)
            base.write_bytes(encode_png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)))
        d = root / f"d{i // PER_DIR:05d}"
        if i % PER_DIR == 0 or i == start:
            d.mkdir(parents=True, exist_ok=True)
        target = d / f"img_{i:07d}.png"
        if not target.exists():
            os.link(base, target)


def options(model: Path, archive: Path, out: Path, run_id: str):
    from segops.inference.options import InferOptions

    return InferOptions(str(model), str(archive), str(out), crf=False, run_id=run_id)


def child_graph(model: str, archive: str, out: str) -> dict:
    import apache_beam as beam

    from segops.inference import table
    from workflows.infer import build_infer_pipeline, check_model

    opts = options(Path(model), Path(archive), Path(out), "graph")
    p = beam.Pipeline()
    build_infer_pipeline(p, opts, check_model(opts), table.begin_run(opts.output, opts.run_id))
    return {"graph_bytes": len(p.to_runner_api().SerializeToString())}


def child_run(model: str, archive: str, out: str, run_id: str) -> dict:
    from workflows.infer import run_infer

    start = time.perf_counter()
    report = run_infer(options(Path(model), Path(archive), Path(out), run_id))
    return {"seconds": time.perf_counter() - start, "processed": report.processed, "skipped": report.skipped,
            "found": report.found}  # fmt: skip


def child_driver_steps(out: str, model_id: str) -> dict:
    """What the driver itself does around the pipeline: begin the run, (empty) commit, summary."""
    from segops.inference import summary, table

    start = time.perf_counter()
    table.begin_run(out, "bench-empty")
    table.commit_run(out, "bench-empty", model_id)
    summary_start = time.perf_counter()
    s = summary.summarize(out, model_id)
    return {"seconds": time.perf_counter() - start, "summary_seconds": time.perf_counter() - summary_start,
            "rows": s["images"]}  # fmt: skip


def child_seed(model: str, archive: str, out: str) -> dict:
    """One row per image, as earlier runs would have written them (for N above --full-max)."""
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake

    from segops.inference import table
    from segops.inference.rows import class_pixels, metrics_schema
    from segops.models import export_dir

    model_id = export_dir.load_info(model).model_id
    schema = metrics_schema()
    pixels = class_pixels(np.zeros((H, W), np.uint8))  # class_pixels is non-nullable: an all-road mask
    table.ensure_table(out)
    start = time.perf_counter()
    rows: list[dict] = []

    def flush() -> None:
        cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
        write_deltalake(table.table_uri(out), pa.table(cols, schema=schema), mode="append")
        rows.clear()

    for d in sorted(Path(archive).iterdir()):
        for f in sorted(d.iterdir()):
            st = f.stat()
            rows.append({"path": str(f), "rel_path": f"{d.name}/{f.name}", "input_size": st.st_size,
                         "input_mtime": st.st_mtime, "height": H, "width": W, "model_id": model_id,
                         "run_id": "seed", "crf": False, "has_labels": False, "inference_ms": 0.0,
                         "mean_confidence": 0.5, "low_confidence_fraction": 0.0, "class_pixels": pixels})  # fmt: skip
            if len(rows) >= 200_000:
                flush()
    if rows:
        flush()
    return {"seconds": time.perf_counter() - start}


def peak_rss_mb() -> float:
    """This process' peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_child(fn: str, *args: str) -> dict:
    """Run ``fn`` in a fresh process; its result plus that process' peak RSS."""
    # VmHWM, not ru_maxrss: the latter is inherited from the (TensorFlow-loaded) parent at fork
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_archive as b; r = b.{fn}(*{list(args)!r}); r['peak_rss_mb'] = b.peak_rss_mb(); "
            f"print('RESULT', json.dumps(r))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{fn} failed:\n{proc.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--full-max", type=int, default=10000, help="full first runs up to this N")
    parser.add_argument("--work", default="bench/out/archive")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work)
    from segops.models import export_dir

    model_id = export_dir.load_info(str(model)).model_id
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)  # fmt: skip
    first_per_image: float | None = None
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        archive, out = work / f"archive{n}", work / f"out{n}"
        t0 = time.perf_counter()
        make_archive(archive, n)
        r: dict = {"n": n, "build_archive_s": round(time.perf_counter() - t0, 1)}
        fresh = not (out / "results").exists()
        r["graph"] = in_child("child_graph", str(model), str(archive), str(out))
        if fresh:
            if n <= args.full_max:
                r["first"] = in_child("child_run", str(model), str(archive), str(out), "first")
                first_per_image = r["first"]["seconds"] / n
            else:
                r["seed"] = in_child("child_seed", str(model), str(archive), str(out))
        r["rerun0"] = in_child("child_run", str(model), str(archive), str(out), f"rerun0-{time.time():.0f}")
        r["driver_steps"] = in_child("child_driver_steps", str(out), model_id)
        make_archive(archive, n + n // 100, start=n)
        r["rerun1"] = in_child("child_run", str(model), str(archive), str(out), f"rerun1-{time.time():.0f}")
        if first_per_image:
            full = first_per_image * n
            r["full_run_scaled_s"] = round(full, 1)
            r["rerun1_vs_full"] = round(r["rerun1"]["seconds"] / full, 4)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\n{'N':>9} {'graph KB':>9} {'rerun0 s':>9} {'rerun0 RSS MB':>14} {'driver RSS MB':>14} "
          f"{'rerun1 s':>9} {'1%/full':>8} {'summary s':>10}")  # fmt: skip
    for r in results:
        print(f"{r['n']:>9} {r['graph']['graph_bytes'] / 1024:>9.1f} {r['rerun0']['seconds']:>9.1f} "
              f"{r['rerun0']['peak_rss_mb']:>14.0f} {r['driver_steps']['peak_rss_mb']:>14.0f} "
              f"{r['rerun1']['seconds']:>9.1f} {r.get('rerun1_vs_full', float('nan')):>8.3f} "
              f"{r['driver_steps']['summary_seconds']:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
