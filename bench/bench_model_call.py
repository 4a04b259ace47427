"""The model call of `segops infer` per core, by runtime (run by hand; not a test).

    .venv/bin/python bench/bench_model_call.py [--size 1024x2048] [--frames 3] [--depth 4 --base-filters 32]

One fresh process per runtime, pinned to one core with one compute thread, times the same
exported U-Net (random weights; timings do not depend on them) on the same frames and compares
its probabilities with the reference (the SavedModel with TensorFlow's oneDNN kernels):

* ``tf``: the export's SavedModel ``serving_default`` (what `segops infer` runs), oneDNN on
  (segops' default on x86-64);
* ``tf-eigen``: the same with TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's default on CPUs without
  VNNI/AMX);
* ``tf-xla``: the Keras model in a ``tf.function(jit_compile=True)``;
* ``onnxruntime``: the serving function converted by tf2onnx (opset 17), ONNX Runtime's CPU
  provider, one intra-op thread.

Reports CPU-seconds and wall seconds per frame (best of the repeats), the max absolute
probability difference and the argmax agreement with ``tf``.
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

RUNTIMES = ("tf", "tf-eigen", "tf-xla", "onnxruntime")


def frames(n: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    # Smooth random images: timings do not depend on content; the agreement check needs
    # non-trivial inputs.
    base = rng.integers(0, 256, (n, size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 16, axis=1), 16, axis=2)


def build_export(out: str, depth: int, base_filters: int) -> None:
    import keras

    from segops.models import build_model, export_dir

    keras.utils.set_random_seed(0)
    model = build_model("unet", depth=depth, base_filters=base_filters, dropout=0.0, dilated=False,
                        upsampling="transpose")  # fmt: skip
    info = export_dir.ModelInfo(architecture="unet", num_classes=19, input_size=(256, 512), stride=2**depth)
    export_dir.export_model(model, out, info)


def load_runtime(name: str, model_dir: str, size: tuple[int, int]):  # noqa: ANN201
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from segops.models import export_dir

    if name in ("tf", "tf-eigen"):
        fn = export_dir.load_serving_fn(model_dir)
        return lambda x: fn(images=tf.constant(x))["probabilities"].numpy()
    import keras

    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
    if name == "tf-xla":
        fn = tf.function(lambda x: tf.nn.softmax(model(tf.cast(x, tf.float32), training=False)), jit_compile=True)
        return lambda x: fn(tf.constant(x)).numpy()
    import onnxruntime as ort
    import tf2onnx

    spec = (tf.TensorSpec((None, *size, 3), tf.uint8, name="images"),)
    fn = tf.function(lambda images: tf.nn.softmax(model(tf.cast(images, tf.float32), training=False)))
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, output_path=path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(None, {input_name: x})[0]


def worker(name: str, model_dir: str, n: int, size: tuple[int, int], repeats: int) -> dict[str, object]:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    run = load_runtime(name, model_dir, size)
    x = frames(n, size)
    outs = [run(x[i : i + 1]) for i in range(n)]  # warm-up (and compile), and the outputs
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            run(x[i : i + 1])
        best_cpu = min(best_cpu, (time.process_time() - c0) / n)
        best_wall = min(best_wall, (time.perf_counter() - t0) / n)
    np.save(os.path.join(model_dir, f"probs-{name}.npy"), np.concatenate(outs))
    return {"runtime": name, "cpu_s": best_cpu, "wall_s": best_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1024x2048")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--base-filters", type=int, default=32)
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.frames, size, args.repeats)))
        return

    model_dir = tempfile.mkdtemp(prefix="segops-bench-")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {os.getcwd()!r}); "
                    f"from bench.bench_model_call import build_export; "
                    f"build_export({model_dir!r}, {args.depth}, {args.base_filters})"], env=env, check=True)  # fmt: skip
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; U-Net depth {args.depth}, "
          f"{args.base_filters} filters; {args.frames} frames {args.size}; load before {os.getloadavg()}")  # fmt: skip
    rows = []
    for name in args.runtimes.split(","):
        wenv = {**env, "TF_ENABLE_ONEDNN_OPTS": "0"} if name == "tf-eigen" else env
        cmd = [sys.executable, __file__, "--worker", name, model_dir, "--frames", str(args.frames),
               "--size", args.size, "--repeats", str(args.repeats)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=wenv)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = np.load(os.path.join(model_dir, "probs-tf.npy"))
    base = next(r for r in rows if r["runtime"] == "tf")
    print(f"load after {os.getloadavg()}")
    for r in rows:
        probs = np.load(os.path.join(model_dir, f"probs-{r['runtime']}.npy"))
        agree = float(np.mean(probs.argmax(-1) == ref.argmax(-1)))
        print(f"{r['runtime']:>12}: {r['cpu_s']:6.2f} CPU-s/frame ({r['wall_s']:6.2f} s wall), "
              f"{base['cpu_s'] / r['cpu_s']:4.2f}x tf; max |dp| {np.abs(probs - ref).max():.2e}, "
              f"argmax agreement {100 * agree:.4f} %")  # fmt: skip


if __name__ == "__main__":
    main()
