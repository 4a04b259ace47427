"""One network through two model sources of `segops infer`, one core each (run by hand; not a test).

    .venv/bin/python bench/bench_model_sources.py [--model fast_scnn] [--size 1024x2048] [--frames 2]

Builds the network at random weights (timings do not depend on them) and writes it twice: as a
segops export (``segops-export`` source: the SavedModel ``serving_default`` run by TensorFlow,
softmax inside the graph) and as an ONNX file of its Keras model with a card (``onnx`` source:
onnxruntime's CPU provider, logits out, segops' numpy softmax). Each source runs in a fresh
process pinned to one core with one compute thread, through ``open_source(path).load(1).predict``
exactly as RunInference calls it. Reports CPU-seconds and wall seconds per frame (best of the
repeats), the max probability difference and the argmax agreement between the two.
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

import numpy as np

SOURCES = ("segops-export", "onnx")


def frames(n: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (n, size[0] // 16, size[1] // 16, 3), dtype=np.uint8)  # smooth, non-trivial
    return np.repeat(np.repeat(base, 16, axis=1), 16, axis=2)


def build(root: str, name: str, size: tuple[int, int]) -> None:
    """``root/export`` (segops export) and ``root/model.onnx`` + its card, of one network."""
    import keras
    import tensorflow as tf
    import tf2onnx

    from segops.models import build_model, export_dir, model_stride

    keras.utils.set_random_seed(0)
    model = build_model(name)
    stride = model_stride(name)
    export_dir.export_model(model, os.path.join(root, "export"), export_dir.ModelInfo(name, 19, size, stride))
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="images"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=os.path.join(root, "model.onnx"))
    card = {"card_version": 1, "name": name, "classes": "cityscapes", "input": {"stride": stride}, "output": {"kind": "logits"}}
    with open(os.path.join(root, "model.onnx.card.json"), "w") as f:
        json.dump(card, f)


def worker(source_kind: str, root: str, n: int, size: tuple[int, int], repeats: int) -> dict[str, object]:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from segops.inference.sources import open_source

    path = os.path.join(root, "export" if source_kind == "segops-export" else "model.onnx")
    model = open_source(path).load(threads=1)
    x = frames(n, size)
    outs = [model.predict(x[i : i + 1]) for i in range(n)]  # warm-up, and the outputs
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            model.predict(x[i : i + 1])
        best_cpu = min(best_cpu, (time.process_time() - c0) / n)
        best_wall = min(best_wall, (time.perf_counter() - t0) / n)
    np.save(os.path.join(root, f"probs-{source_kind}.npy"), np.concatenate(outs))
    return {"source": source_kind, "cpu_s": best_cpu, "wall_s": best_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fast_scnn")
    ap.add_argument("--size", default="1024x2048")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.frames, size, args.repeats)))
        return
    root = tempfile.mkdtemp(prefix="segops-bench-sources-")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", f"from bench.bench_model_sources import build; "
                    f"build({root!r}, {args.model!r}, {size!r})"], env=env, check=True)  # fmt: skip
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; {args.model} random weights; "
          f"{args.frames} frames {args.size}; load before {os.getloadavg()}")  # fmt: skip
    rows = []
    for kind in SOURCES:
        cmd = [sys.executable, __file__, "--worker", kind, root, "--frames", str(args.frames), "--size", args.size,
               "--repeats", str(args.repeats)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{kind}: failed\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"load after {os.getloadavg()}")
    ref = np.load(os.path.join(root, "probs-segops-export.npy"))
    base = rows[0]
    for r in rows:
        probs = np.load(os.path.join(root, f"probs-{r['source']}.npy"))
        agree = float(np.mean(probs.argmax(-1) == ref.argmax(-1)))
        print(f"{r['source']:>14}: {r['cpu_s']:6.2f} CPU-s/frame ({r['wall_s']:6.2f} s wall), "
              f"{base['cpu_s'] / r['cpu_s']:4.2f}x segops-export; max |dp| {np.abs(probs - ref).max():.2e}, "
              f"argmax agreement {100 * agree:.4f} %")  # fmt: skip


if __name__ == "__main__":
    main()
