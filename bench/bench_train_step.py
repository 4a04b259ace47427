"""Training-step throughput on CPU against the machine's sgemm floor (run by hand; not a test).

    .venv/bin/python bench/bench_train_step.py [--steps 6] [--configs default,eigen,xla]

In one run, for the CLI-default U-Net (depth 4, 32 filters) at 256x512, batch 2, and the demo's
U-Net (depth 3, 16 filters) at 128x256, batch 8, each in a fresh process per configuration
(TensorFlow reads its oneDNN switch and thread pools at start-up):

* the wall time of a training step (``keras.Model.fit`` compiled as segops.training.loop does:
  Adam + poly decay, ENet-weighted CE, streaming mIoU/Dice, on an in-memory batch);
* the step's convolution FLOPs (counted from the layer shapes: forward + backward = 3x forward)
  divided by the step time, as a fraction of numpy's float32 GEMM rate on 2048x2048 matrices,
  measured in the same process right before and after (the best of the two): the "sgemm floor".

Configurations: ``default`` (what segops does: oneDNN on, XLA per Keras' "auto", i.e. off on
CPU), ``eigen`` (TF_ENABLE_ONEDNN_OPTS=0: TensorFlow's default on CPUs without VNNI/AMX),
``xla`` (oneDNN on and ``--xla``), ``eigen-xla``, and ``avx2`` (oneDNN limited to AVX2 by
ONEDNN_MAX_CPU_ISA and numpy's OpenBLAS to its Haswell kernels by OPENBLAS_CORETYPE, floor
included: standing in for a machine without AVX-512, such as the AMD EPYC machines some of
these VMs run on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

MODELS = {  # name -> (train flags, crop, batch)
    "cli-default": ({"depth": 4, "base_filters": 32}, (256, 512), 2),
    "demo": ({"depth": 3, "base_filters": 16}, (128, 256), 8),
}
CONFIGS = {  # name -> (environment, xla)
    "default": ({}, None),
    "eigen": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, None),
    "xla": ({}, True),
    "eigen-xla": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, True),
    "avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}, None),
}


def sgemm_rate(n: int = 2048, repeats: int = 8) -> float:
    """numpy float32 GEMM FLOP/s (the BLAS numpy links, all its threads)."""
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def conv_flops(model: object, crop: tuple[int, int]) -> float:
    """Forward multiply-add FLOPs (2 per MAC) of the convolutions for one ``crop`` image (the
    models take any size, so the shapes come from one forward pass of a probe model)."""
    import keras
    import numpy as np

    convs = [layer for layer in model._flatten_layers(include_self=False)  # noqa: SLF001 (nested too)
             if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose | keras.layers.DepthwiseConv2D)]
    probe = keras.Model(model.inputs, [t for c in convs for t in (c.input, c.output)])
    shapes = [t.shape for t in probe(np.zeros((1, *crop, 3), "float32"))]
    total = 0.0
    for i, layer in enumerate(convs):
        (_, hi, wi, cin), (_, ho, wo, cout) = shapes[2 * i], shapes[2 * i + 1]
        kh, kw = layer.kernel.shape[:2]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            total += 2.0 * ho * wo * kh * kw * cout
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            total += 2.0 * hi * wi * kh * kw * cin * cout
        else:
            total += 2.0 * ho * wo * kh * kw * cin * cout
    return total


def worker(model_name: str, config: str, steps: int) -> dict[str, object]:
    import keras
    import numpy as np
    import tensorflow as tf

    from segops.training.loop import compile_model
    from segops.training.options import TrainOptions

    flags, crop, batch = MODELS[model_name]
    keras.utils.set_random_seed(0)
    opts = TrainOptions.from_flat(prepared="", out="", epochs=1, batch_size=batch, crop=crop,
                                  xla=CONFIGS[config][1], **flags)  # fmt: skip
    model = opts.model.build()
    compile_model(model, opts, [1.0] * 19, steps)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, *crop, 3)).astype("float32")
    y = rng.integers(0, 19, (batch, *crop)).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    floor_before = sgemm_rate()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace (and compile) + warm up
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    floor = max(floor_before, sgemm_rate())
    step_flops = 3 * conv_flops(model, crop) * batch
    return {"model": model_name, "config": config, "step_s": wall / steps, "cpu_s": cpu / steps,
            "gflop": step_flops / 1e9, "gflops": step_flops / (wall / steps) / 1e9,
            "sgemm_gflops": floor / 1e9, "of_floor": step_flops / (wall / steps) / floor,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--configs", default="default,eigen,xla,eigen-xla,avx2")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, config = args.worker.split(":")
        print(json.dumps(worker(name, config, args.steps)))
        return

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cpus; "
          f"{args.steps} timed steps; load before: {os.getloadavg()}")  # fmt: skip
    rows = []
    for name in args.models.split(","):
        for config in args.configs.split(","):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **CONFIGS[config][0]}
            cmd = [sys.executable, __file__, "--worker", f"{name}:{config}", "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['model']:>11} {r['config']:>9}: {r['step_s']:6.3f} s/step ({r['cpu_s']:.3f} CPU-s), "
                  f"{r['gflop']:6.1f} GFLOP/step, {r['gflops']:6.1f} GFLOP/s = {100 * r['of_floor']:5.1f}% "
                  f"of sgemm {r['sgemm_gflops']:.0f} GFLOP/s", flush=True)  # fmt: skip
    print(f"load after: {os.getloadavg()}")
    base = {r["model"]: r["step_s"] for r in rows if r["config"] == "default"}
    for r in rows:
        if r["model"] in base:
            print(f"{r['model']:>11} {r['config']:>9}: step time {r['step_s'] / base[r['model']]:.2f}x default")


if __name__ == "__main__":
    main()
