"""Benchmark the training input pipeline alone (run by hand; not a test).

    .venv/bin/python bench/bench_input.py [--images 16] [--seconds 8] [--repeats 3] [--cores 1,2] [--weight-maps]

Makes 1024x2048 synthetic pairs (segops synth) and prepares them (segops prepare, DirectRunner),
then, for each core count in a fresh process (TensorFlow's thread pools are fixed at start-up:
intra/inter-op threads, the tf.data private pool and num_parallel_calls all set to the count),
measures images/s of

* the *floor*: decoding the two PNGs of each record (tf.io.decode_png, image and label) from
  bytes already in memory, nothing else;
* the pipeline: segops.training.input_pipeline.train_dataset, i.e. shard reading with CRC checks,
  parsing via segops.core.records, random scale 0.5..2 + crop to 512x1024, flip, photometric jitter,
  batching (4).

Floor and pipeline are measured alternately, ``--repeats`` times each, and the best of each is
kept (on a shared machine other jobs only ever slow a measurement down). Rates are reported per
wall second and per CPU-second of the benchmark process (what a core delivers when not shared).

Targets: pipeline >= 10 images/s per core and floor/pipeline time <= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEIGHT, WIDTH = 1024, 2048
CROP = (512, 1024)
BATCH = 4


def make_data(base: Path, n: int, weight_maps: bool) -> Path:
    from segops.datasets.synth import generate_dataset
    from segops.prepare.options import PrepareOptions
    from workflows.prepare import run_prepare

    prepared = base / ("prepared-maps" if weight_maps else "prepared")
    if (prepared / "manifest.json").exists():
        return prepared
    raw = base / "raw"
    if not raw.exists():
        generate_dataset(str(raw), {"train": n, "val": 0, "test": 0}, height=HEIGHT, width=WIDTH, seed=3, workers=2)
    run_prepare(PrepareOptions(input=str(raw), output=str(prepared), splits=("train",), weight_maps=weight_maps))
    return prepared


def _rate(iterator, count_of, seconds: float, warmup: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) over ``seconds`` after
    ``warmup`` elements. The CPU rate is what one core delivers when it is not shared: on a
    machine busy with other jobs it is the robust number, the wall rate the observed one."""
    for _ in range(warmup):
        next(iterator)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        n += count_of(next(iterator))
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def worker(prepared: Path, cores: int, seconds: float, weight_maps: bool, repeats: int) -> dict[str, float]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    from segops.training import input_pipeline as ip
    from segops.training.options import AugmentConfig, PipelineConfig

    files = ip.shard_paths(str(prepared), "train")
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = cores
    opts.threading.max_intra_op_parallelism = 1

    # Floor: the two PNG decodes, from bytes in memory.
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    feats = [tf.io.parse_single_example(r, {k: tf.io.FixedLenFeature([], tf.string) for k in ("image/encoded", "label/encoded")}) for r in raw]
    pngs = tf.data.Dataset.from_tensor_slices(
        ([f["image/encoded"] for f in feats], [f["label/encoded"] for f in feats])
    )
    floor = pngs.repeat().map(
        lambda img, lab: (tf.io.decode_png(img, channels=3), tf.io.decode_png(lab, channels=1)),
        num_parallel_calls=cores,
    ).prefetch(2).with_options(opts)

    cfg = PipelineConfig(batch_size=BATCH, weight_maps=weight_maps, shuffle_buffer=8,
                         cycle_length=min(2, len(files)), num_parallel_calls=cores, data_threads=cores)  # fmt: skip
    aug = AugmentConfig(crop=CROP, scale_range=(0.5, 2.0))
    ds = ip.train_dataset(files, aug, cfg, seed=0, steps_per_epoch=10_000, initial_epoch=0, epochs=1, num_records=len(raw))
    # Alternate the two, `repeats` times, and keep the best of each: the machine may be shared,
    # and other jobs only ever make a measurement slower.
    floor_it, pipe_it = iter(floor), iter(ds)
    floor_rates, pipe_rates = [], []
    for _ in range(repeats):
        floor_rates.append(_rate(floor_it, lambda _: 1, seconds, warmup=4))
        pipe_rates.append(_rate(pipe_it, lambda b: int(b[0].shape[0]), seconds, warmup=2))
    floor_rate = (max(r[0] for r in floor_rates), max(r[1] for r in floor_rates))
    pipe_rate = (max(r[0] for r in pipe_rates), max(r[1] for r in pipe_rates))
    return {"cores": cores, "floor": floor_rate[0], "floor_cpu": floor_rate[1], "pipeline": pipe_rate[0],
            "pipeline_cpu": pipe_rate[1], "records": len(raw)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="alternating floor/pipeline measurements; best kept")
    ap.add_argument("--cores", default="1,2")
    ap.add_argument("--weight-maps", action="store_true", help="records with U-Net weight maps (decoded too)")
    ap.add_argument("--data", default=None, help="reuse/keep data here (default: a temporary directory)")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(Path(args.data), args.worker, args.seconds, args.weight_maps, args.repeats)))
        return

    base = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="bench-input-"))
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepared = make_data(base, args.images, args.weight_maps)
    print(f"data: {args.images} records {HEIGHT}x{WIDTH} in {prepared} ({time.perf_counter() - t0:.0f} s to make)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; load before: {os.getloadavg()}")
    rows = []
    for cores in (int(c) for c in args.cores.split(",")):
        cmd = [sys.executable, __file__, "--worker", str(cores), "--data", str(prepared), "--seconds", str(args.seconds),
               "--repeats", str(args.repeats)]  # fmt: skip
        if args.weight_maps:
            cmd.append("--weight-maps")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"load after: {os.getloadavg()}")
    print("\nwall: images/s observed; cpu: images per CPU-second of the process (per core, unshared)")
    print(f"{'cores':>5} {'floor wall':>11} {'pipe wall':>10} {'wall/core':>10} {'vs floor':>9} "
          f"{'floor cpu':>10} {'pipe cpu':>9} {'vs floor':>9}")  # fmt: skip
    for r in rows:
        print(f"{r['cores']:>5} {r['floor']:>11.1f} {r['pipeline']:>10.1f} {r['pipeline'] / r['cores']:>10.1f} "
              f"{r['floor'] / r['pipeline']:>8.2f}x {r['floor_cpu']:>10.1f} {r['pipeline_cpu']:>9.1f} "
              f"{r['floor_cpu'] / r['pipeline_cpu']:>8.2f}x")  # fmt: skip
    print("\ntargets: >= 10 images/s per core, <= 1.5x the decode floor")


if __name__ == "__main__":
    main()
