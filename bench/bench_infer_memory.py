"""Peak memory of one infer worker on one very large image, with the defaults (run by hand).

    .venv/bin/python bench/bench_infer_memory.py [--height 4096] [--width 8192] [--base-filters 16]

Writes a HEIGHTxWIDTH PNG (a 1024x2048 synthetic street frame repeated), exports a U-Net
(depth 4, ``--base-filters``, random weights: memory does not depend on the weights) and runs
``run_infer`` with the default options (tile 1024x2048, CRF on, batch 2) on the DirectRunner
in a fresh process, one worker. That process reports its own peak RSS (and samples its RSS every 0.25 s, to show when the peak falls)
(``getrusage(RUSAGE_SELF).ru_maxrss``: the worker, since the DirectRunner runs in it) and its
children's (the isolated decoder/CRF helper process of segops.core.isolation).
Also: ``--isolation-overhead N`` times decoding and the CRF's mean field on a 1024x2048 frame
N times directly and through segops.core.isolation.call (the per-image cost of isolation).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _gb(kib: int) -> float:
    return kib / 1024**2


def child(args: argparse.Namespace) -> None:
    import threading

    from segops.core import isolation
    from segops.inference.options import InferOptions
    from workflows.infer import run_infer

    samples: list[tuple[float, int]] = []  # (seconds since start, RSS KiB): where the peak falls
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            with open("/proc/self/statm") as f:
                samples.append((time.perf_counter() - start, int(f.read().split()[1]) * 4))

    start = time.perf_counter()
    threading.Thread(target=sample, daemon=True).start()
    report = run_infer(InferOptions(args.model, args.input, args.out), ["--direct_num_workers=1"])
    seconds = time.perf_counter() - start
    done.set()
    peak_t, peak_kib = max(samples, key=lambda s: s[1]) if samples else (0.0, 0)
    isolation.shutdown()  # waits for the helper, so its peak is in RUSAGE_CHILDREN
    print(json.dumps({
        "processed": report.processed, "dead_lettered": report.dead_lettered, "seconds": round(seconds, 1),
        "worker_peak_rss_gb": round(_gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), 3),
        "helper_peak_rss_gb": round(_gb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), 3),
        "sampled_peak_gb_at_s": [round(_gb(peak_kib), 3), round(peak_t, 1)],
        "sampled_gb_every_10s": [round(_gb(k), 2) for t, k in samples[::40]],
    }))  # fmt: skip


def isolation_overhead(frame_png: Path, n: int) -> dict:
    import numpy as np

    from segops.core import isolation
    from segops.inference import crf
    from segops.inference.decoding import decode_pair

    data = frame_png.read_bytes()
    isolation.call("decode", "warm-up", decode_pair, data, None, 1 << 25)  # the helper's start (once per worker)
    rgb, _ = decode_pair(data, None, 1 << 25)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(19, 0.3), size=rgb.shape[:2]).astype(np.float32)

    def timed(fn) -> float:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e3

    return {
        "decode_direct_ms": timed(lambda: decode_pair(data, None, 1 << 25)),
        "decode_isolated_ms": timed(lambda: isolation.call("decode", "x", decode_pair, data, None, 1 << 25)),
        "crf_direct_ms": timed(lambda: crf.refine(probs, rgb)),
        "crf_isolated_ms": timed(lambda: crf.refine(probs, rgb, runner=lambda f, *a: isolation.call("crf", "x", f, *a))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=4096)
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--isolation-overhead", type=int, default=0, metavar="N")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model")
    ap.add_argument("--input")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import cv2
    import numpy as np

    from segops.datasets.synth import generate_dataset

    work = Path(tempfile.mkdtemp(prefix="segops_bench_memory_"))
    generate_dataset(str(work / "synth"), {"train": 0, "val": 1, "test": 0}, height=1024, width=2048, seed=1)
    frame_png = next((work / "synth" / "leftImg8bit" / "val").rglob("*.png"))
    frame = cv2.imread(str(frame_png))
    big = np.tile(frame, (-(-args.height // 1024), -(-args.width // 2048), 1))[: args.height, : args.width]
    (work / "in").mkdir()
    cv2.imwrite(str(work / "in" / "big.png"), big)
    export = (
        "import keras; from segops.models import build_model; from segops.models import export_dir; "
        "from segops.core.labels import NUM_CLASSES; keras.utils.set_random_seed(0); "
        f"export_dir.export_model(build_model('unet', depth=4, base_filters={args.base_filters}), '{work / 'model'}', "
        "export_dir.ModelInfo('unet', NUM_CLASSES, (1024, 2048), 16))"
    )
    subprocess.run([sys.executable, "-c", export], check=True, cwd=ROOT)
    result = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
              "image": f"{args.height}x{args.width}", "model": f"unet depth 4, base_filters {args.base_filters}"}  # fmt: skip
    out = subprocess.run([sys.executable, __file__, "--child", "--model", str(work / "model"), "--input",
                          str(work / "in"), "--out", str(work / "out")], check=True, capture_output=True, text=True)  # fmt: skip
    result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.isolation_overhead:
        result.update({k: round(v, 1) for k, v in isolation_overhead(frame_png, args.isolation_overhead).items()})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
