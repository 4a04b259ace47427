"""Benchmark `segops infer` on 1024x2048 frames, one core per worker (run by hand; not a test).

    .venv/bin/python bench/bench_infer.py [--images 3] [--model DIR] [--core 0] [--json out.json]

Each phase runs in a fresh process pinned to one core (TensorFlow with one intra-op thread,
OpenCV with one thread), so "per core" means per core, and its peak RSS is the worker's own
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

* ``inference``: the model alone (``segops.inference.tiling.predict_probabilities``) per frame, whole
  frame (the default: a frame fits in the default 1024x2048 tile) and as 512x1024 tiles with
  64 px overlap (what a smaller ``--tile`` costs), tiles batched as the handler does;
* ``crf``: on those probabilities, the fast path (``segops.inference.crf.refine``) and, in the same
  process on the same probabilities, the baseline: pydensecrf2 at full resolution, 5 iterations;
* ``end-to-end``: ``run_infer`` (the Beam pipeline on the DirectRunner, in-process, one worker)
  over 1 and over N frames with --overwrite; the marginal time per frame (T(N) - T(1)) / (N - 1)
  cancels the fixed start-up (TensorFlow import, model load, Beam graph);
* ``end-to-end-2-workers``: the same with two DirectRunner worker processes
  (``--direct_running_mode=multi_processing``), unpinned: the 2-core machine's throughput
  against one worker's.

Wall and process-CPU times are both reported: on a shared machine the CPU time of a process
pinned to one core is the less disturbed measure of work per core.

Without ``--model`` a U-Net (depth 4, 16 base filters, random weights) is exported and used:
timings do not depend on the weights. Targets: CRF <= 1 s per frame on one core at >= 99 %
agreement with the baseline (bench_crf.py measures agreement on realistic probabilities);
peak RSS per worker <= 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HEIGHT, WIDTH = 1024, 2048
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pin(core: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    import cv2

    cv2.setNumThreads(1)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frames(data: Path, n: int) -> list[Path]:
    return sorted((data / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))[:n]


def _decode(path: Path):
    from segops.core import imageio

    return imageio.decode_rgb_image(path.read_bytes())


def phase_inference(args) -> dict:
    from segops.inference.model import ServingModel
    from segops.inference.options import PredictOptions
    from segops.inference.tiling import predict_probabilities
    from segops.models.export_dir import load_info, resolve_export_dir

    info = load_info(args.model)
    t = time.perf_counter()
    model = ServingModel(resolve_export_dir(args.model), threads=1)
    load_s = time.perf_counter() - t
    images = [_decode(p) for p in _frames(Path(args.data), args.images)]
    out: dict = {"model_load_s": load_s, "rss_after_load_mib": _rss_mib()}
    for name, tile in (("whole", None), ("tiled", (512, 1024))):
        predict_probabilities(model, images[:1], info.stride, PredictOptions(4, 1 << 22, tile or 0, 64))  # warm-up (graph tracing)
        times, cpu = [], []
        for img in images:
            t, c = time.perf_counter(), time.process_time()
            predict_probabilities(model, [img], info.stride, PredictOptions(4, 1 << 22, tile or 0, 64))
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[f"{name}_s_per_image"] = sum(times) / len(times)
        out[f"{name}_cpu_s_per_image"] = sum(cpu) / len(cpu)
        out[f"rss_after_{name}_mib"] = _rss_mib()
    return out


def phase_crf(args) -> dict:
    import numpy as np

    from segops.inference.crf import CRFParams, dense_crf_reference, refine
    from segops.inference.model import ServingModel
    from segops.inference.options import PredictOptions
    from segops.inference.tiling import predict_probabilities
    from segops.models.export_dir import load_info, resolve_export_dir

    info = load_info(args.model)
    model = ServingModel(resolve_export_dir(args.model), threads=1)
    images = [_decode(p) for p in _frames(Path(args.data), args.images)]
    fast, base, agree, fast_cpu, base_cpu = [], [], [], [], []
    refine(predict_probabilities(model, images[:1], info.stride, PredictOptions(1, 1 << 22, 0, 64))[0], images[0])  # warm-up
    for img in images:
        probs = predict_probabilities(model, [img], info.stride, PredictOptions(1, 1 << 22, 0, 64))[0]
        t, c = time.perf_counter(), time.process_time()
        labels = refine(probs, img, CRFParams()).labels
        fast.append(time.perf_counter() - t)
        fast_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        reference = dense_crf_reference(probs, img).argmax(axis=2)
        base.append(time.perf_counter() - t)
        base_cpu.append(time.process_time() - c)
        agree.append(float((labels == reference).mean()))
    return {
        "fast_s_per_image": float(np.mean(fast)),
        "baseline_s_per_image": float(np.mean(base)),
        "speedup": float(np.mean(base) / np.mean(fast)),
        "fast_cpu_s_per_image": float(np.mean(fast_cpu)),
        "baseline_cpu_s_per_image": float(np.mean(base_cpu)),
        "agreement_min": min(agree),
        "note": "agreement on this model's probabilities (random weights unless --model); see bench_crf.py",
    }


def phase_e2e(args, workers: int = 1) -> dict:
    import shutil
    import tempfile

    from segops.inference.options import InferOptions, PredictOptions
    from workflows.infer import run_infer

    frames = _frames(Path(args.data), args.images)
    work = Path(tempfile.mkdtemp(prefix="segops_bench_infer_"))
    try:
        times, cpu = {}, {}
        for n in (1, len(frames)):
            inp = work / f"in{n}" / "leftImg8bit" / "val" / "city"
            inp.mkdir(parents=True)
            for f in frames[:n]:
                os.link(f, inp / f.name)
                gt = f.parents[3] / "gtFine" / "val" / f.parent.name / f.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
                gt_dst = work / f"in{n}" / "gtFine" / "val" / "city" / gt.name
                gt_dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(gt, gt_dst)
            options = InferOptions(args.model, str(work / f"in{n}"), str(work / f"out{n}"), split="val", predict=PredictOptions(tf_threads=1), overwrite=True)
            t, c = time.perf_counter(), time.process_time()
            beam_args = [f"--direct_num_workers={workers}"]
            if workers > 1:  # one process per worker (threads would share one GIL)
                beam_args.append("--direct_running_mode=multi_processing")
            report = run_infer(options, beam_args)
            times[n] = time.perf_counter() - t
            cpu[n] = time.process_time() - c
            assert report.processed == n, report
        n = len(frames)
        marginal = (times[n] - times[1]) / (n - 1) if n > 1 else times[1]
        marginal_cpu = (cpu[n] - cpu[1]) / (n - 1) if n > 1 else cpu[1]
        return {"t1_s": times[1], f"t{n}_s": times[n], "marginal_s_per_image": marginal,
                "images_per_s_per_core": 1 / marginal, "marginal_cpu_s_per_image": marginal_cpu,
                "images_per_cpu_s": 1 / marginal_cpu}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def phase_e2e_two_workers(args) -> dict:
    """End to end with 2 DirectRunner worker processes (not pinned: one core each), each with one
    TensorFlow thread; wall-clock throughput against the 1-worker phase."""
    return phase_e2e(args, workers=2)


PHASES = {"inference": phase_inference, "crf": phase_crf, "end-to-end": phase_e2e,
          "end-to-end-2-workers": phase_e2e_two_workers}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--data", default="/tmp/segops_bench/synth1024")
    ap.add_argument("--model", default=None, help="export dir (default: a random-weight U-Net)")
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # internal: run one phase
    args = ap.parse_args()

    if args.phase:
        if args.phase != "end-to-end-2-workers":
            _pin(args.core)
        result = PHASES[args.phase](args)
        result["peak_rss_mib"] = _rss_mib()
        print("RESULT " + json.dumps(result))
        return

    data = Path(args.data)
    if len(_frames(data, args.images)) < args.images:
        from segops.datasets.synth import generate_dataset

        generate_dataset(str(data), {"train": 2, "val": args.images}, HEIGHT, WIDTH, seed=0)
    if args.model is None:
        args.model = "/tmp/segops_bench/unet16"
        if not Path(args.model, "model.json").exists():
            import keras

            from segops import models
            from segops.models import export_dir

            keras.utils.set_random_seed(0)
            net = models.build_model("unet", depth=4, base_filters=16)
            export_dir.export_model(net, args.model, export_dir.ModelInfo("unet", 19, (512, 1024), models.model_stride("unet", depth=4)))
    load = os.getloadavg()
    print(f"# bench_infer  {platform.node()}  {os.cpu_count()} CPUs  model {args.model}  {args.images} frames "
          f"{HEIGHT}x{WIDTH}  load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)  # fmt: skip
    results = {}
    for phase in args.phases.split(","):
        cmd = [sys.executable, __file__, "--phase", phase, "--images", str(args.images), "--data", str(data),
               "--model", args.model, "--core", str(args.core)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit(f"phase {phase} failed")
        results[phase] = json.loads(line[len("RESULT ") :])
        print(f"{phase}: {json.dumps(results[phase])}", flush=True)
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
