"""Benchmark training-step throughput on CPU for both models (run by hand; not a test).

    .venv/bin/python bench/bench_train_step.py [--size 256x512] [--batch 2] [--steps 6] [--threads 1,2]

For each model (the `segops train` defaults: U-Net depth 4 / 32 filters, FCN-8s 32 filters) and
each thread count (a fresh process: TensorFlow's intra/inter-op pools are fixed at start-up),
runs ``keras.Model.fit`` exactly as segops.training.loop compiles it (Adam + poly decay, weighted CE,
streaming mIoU/Dice) on in-memory batches, and, in the same process, the forward pass alone
(``predict_on_batch``) as the reference: a training step costs about 3x a forward pass (forward,
backward through activations and weights), so train/forward far above 3 would point at
overhead outside the network (metrics, loss, optimizer). Reports images/s, images per
CPU-second, and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def worker(model_name: str, threads: int, size: tuple[int, int], batch: int, steps: int) -> dict[str, float]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras
    import numpy as np

    from segops.training.loop import compile_model
    from segops.training.options import TrainOptions

    keras.utils.set_random_seed(0)
    opts = TrainOptions.from_flat(prepared="", out="", model=model_name, epochs=1, batch_size=batch, crop=size)
    model = opts.model.build()
    compile_model(model, opts, None, steps)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, *size, 3)).astype("float32")
    y = rng.integers(0, 19, (batch, *size)).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()

    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace + warm up
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    model.predict_on_batch(x)
    f0, fc0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.predict_on_batch(x)
    fwall, fcpu = time.perf_counter() - f0, time.process_time() - fc0
    n = steps * batch
    return {"model": model_name, "threads": threads, "params": model.count_params(),
            "train": n / wall, "train_cpu": n / cpu, "forward": n / fwall, "forward_cpu": n / fcpu}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default="unet,fcn8s")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    if args.worker:
        name, threads = args.worker.split(":")
        print(json.dumps(worker(name, int(threads), size, args.batch, args.steps)))
        return

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"{args.size}, batch {args.batch}, {args.steps} steps; load before: {os.getloadavg()}")  # fmt: skip
    rows = []
    for name in args.models.split(","):
        for threads in args.threads.split(","):
            cmd = [sys.executable, __file__, "--worker", f"{name}:{threads}", "--size", args.size,
                   "--batch", str(args.batch), "--steps", str(args.steps)]  # fmt: skip
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"load after: {os.getloadavg()}\n")
    print(f"{'model':>6} {'params':>9} {'thr':>3} {'train img/s':>11} {'img/cpu-s':>9} "
          f"{'fwd img/s':>9} {'img/cpu-s':>9} {'train/fwd time':>14}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:>6} {r['params']:>9,} {r['threads']:>3} {r['train']:>11.2f} {r['train_cpu']:>9.2f} "
              f"{r['forward']:>9.2f} {r['forward_cpu']:>9.2f} {r['forward_cpu'] / r['train_cpu']:>13.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
