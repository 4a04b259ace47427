"""Benchmark `segops prepare` on 1024x2048 synthetic pairs (run by hand; not a test).

    .venv/bin/python bench/bench_prepare.py [--images 40] [--small 8] [--repeats 2] [--profile]

Measures, in one process and on the same files:

* the *floor*: the per-image work nobody can skip (decode the label PNG, labelId->trainId LUT,
  class histogram, encode the trainId PNG, serialize the Example with the image bytes as-is), in a
  plain loop over bytes already in memory, with the same primitives the pipeline uses;
* the pipeline's marginal time per image on the DirectRunner: (T(large) - T(small)) / (large -
  small), so the fixed start-up cost (TensorFlow import, Beam graph, worker start) cancels;
  with and without weight maps, and with 1 and 2 worker processes (multi_processing).

Targets: without weight maps <= 1.5x the floor; 2 workers >= 1.7x the throughput of 1.
``--profile`` runs the per-image DoFns under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 1024, 2048


def make_data(base: Path, n_large: int, n_small: int) -> tuple[Path, Path]:
    from segops.datasets.synth import generate_dataset

    large, small = base / "large", base / "small"
    generate_dataset(str(large), counts={"train": n_large, "val": 0, "test": 0}, height=HEIGHT, width=WIDTH,
                     seed=7, workers=min(2, os.cpu_count() or 1))  # fmt: skip
    images = sorted((large / "leftImg8bit/train").glob("*/*_leftImg8bit.png"))[:n_small]
    for img in images:  # the small set: hard links to the first n_small pairs of the large one
        stem = img.name[: -len("_leftImg8bit.png")]
        for src in (img, *img.parents[3].joinpath("gtFine/train", img.parent.name).glob(stem + "_gtFine_*")):
            dst = small / src.relative_to(large)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    return large, small


def floor_per_image(root: Path, repeats: int, weight_maps: bool = False) -> float:
    """Seconds per image of the unavoidable work, bytes already in memory."""
    import cv2
    import numpy as np

    from segops.imageio import decode_instance_png, decode_label_png, encode_mask_png
    from segops.labels import LABEL_ID_TO_TRAIN_ID
    from segops.records import ExampleFields, encode_example
    from segops.weights import class_weight_lut, instances_from_ids, unet_border_term, weight_map

    items = []
    for img in sorted((root / "leftImg8bit/train").glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        gt = root / "gtFine/train" / img.parent.name / stem
        items.append((img.read_bytes(), Path(f"{gt}_gtFine_labelIds.png").read_bytes(),
                      Path(f"{gt}_gtFine_instanceIds.png").read_bytes(), stem, img.parent.name))  # fmt: skip
    lut = class_weight_lut(np.linspace(0.5, 2.0, 19))

    def one(image: bytes, label_png: bytes, inst_png: bytes, stem: str, city: str) -> bytes:
        label = decode_label_png(label_png)
        train = cv2.LUT(label, LABEL_ID_TO_TRAIN_ID)
        cv2.calcHist([label], [0], None, [256], [0, 256])
        wmap = None
        if weight_maps:
            border = unet_border_term(instances_from_ids(decode_instance_png(inst_png)), 10.0, 5.0)
            wmap = weight_map(train, lut, border)
        return encode_example(ExampleFields(image, encode_mask_png(train), HEIGHT, WIDTH, stem, city, stem,
                                            "train", wmap))  # fmt: skip

    one(*items[0])  # warm-up (imports)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            one(*item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def pipeline_seconds(root: Path, out: Path, weight_maps: bool, beam_args: list[str]) -> float:
    from workflows.prepare import PrepareOptions, run_prepare

    shutil.rmtree(out, ignore_errors=True)
    options = PrepareOptions(input=str(root), output=str(out), weight_maps=weight_maps, shards=2)
    start = time.perf_counter()
    manifest = run_prepare(options, beam_args)
    elapsed = time.perf_counter() - start
    assert manifest["dead_letter"]["total"] == 0, manifest["dead_letter"]
    return elapsed


def slope(times: dict[int, list[float]]) -> tuple[float, float, float]:
    """(seconds per image, best T(large), best T(small)) from the best run of each size."""
    (n_small, t_small), (n_large, t_large) = sorted((n, min(ts)) for n, ts in times.items())
    return (t_large - t_small) / (n_large - n_small), t_large, t_small


def profile(root: Path, weight_maps: bool) -> None:
    """cProfile of the per-image work (Analyze, then the writer's ExampleCoder), called directly."""
    from segops.datasets.cityscapes import discover
    from workflows.prepare import AnalyzeFn, ExampleCoder, PrepareOptions

    options = PrepareOptions(input=str(root), output="unused", weight_maps=weight_maps)
    listing = discover(str(root))
    analyze, coder = AnalyzeFn(options), ExampleCoder()
    analyze.setup()
    weights = tuple(np.linspace(0.5, 2.0, 19)) if weight_maps else None
    coder.encode((next(iter(analyze.process(listing.pairs[0]))), weights))  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    for pair in listing.pairs:
        for prepared in analyze.process(pair):
            coder.encode((prepared, weights))
    prof.disable()
    print(f"\n--- profile, weight maps {'on' if weight_maps else 'off'}, {len(listing.pairs)} images ---")
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="images in the large set")
    ap.add_argument("--small", type=int, default=8, help="images in the small set (slope baseline)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--skip-workers", action="store_true", help="skip the 1 vs 2 worker comparison")
    ap.add_argument("--workdir", default=None, help="keep data here (default: a temporary directory)")
    args = ap.parse_args()

    base = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    if not (base / "large").exists():
        t0 = time.perf_counter()
        make_data(base, args.images, args.small)
        print(f"generated {args.images} synthetic {HEIGHT}x{WIDTH} pairs in {time.perf_counter() - t0:.1f} s")
    large, small, out = base / "large", base / "small", base / "out"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip

    if args.profile:
        profile(small, weight_maps=False)
        profile(small, weight_maps=True)

    one = ["--runner=DirectRunner", "--direct_num_workers=1"]
    pipeline_seconds(small, out, True, one)  # warm-up: imports (TensorFlow), caches
    sizes = {args.images: large, args.small: small}
    # Interleaved repeats, best of each: load from other processes hits every variant alike.
    floors: dict[bool, list[float]] = {False: [], True: []}
    runs: dict[bool, dict[int, list[float]]] = {False: {}, True: {}}
    for _ in range(args.repeats):
        for weight_maps in (False, True):
            floors[weight_maps].append(floor_per_image(large, 1, weight_maps))
            for n, root in sizes.items():
                runs[weight_maps].setdefault(n, []).append(pipeline_seconds(root, out, weight_maps, one))
    floor, floor_w = min(floors[False]), min(floors[True])
    print(f"floor (decode label, LUT, count, encode label PNG, serialize): {floor * 1e3:.1f} ms/image")
    print(f"floor + weight map (instanceIds, border term, weights, float16+zlib): {floor_w * 1e3:.1f} ms/image")
    for weight_maps in (False, True):
        per, tl, ts = slope(runs[weight_maps])
        print(f"pipeline, 1 worker (in_memory), weight maps {'on ' if weight_maps else 'off'}: {per * 1e3:.1f} ms/image "
              f"(T({args.images})={tl:.2f} s, T({args.small})={ts:.2f} s) = {per / floor:.2f}x floor"
              + (f", {per / floor_w:.2f}x floor+weight map" if weight_maps else ""), flush=True)  # fmt: skip

    if not args.skip_workers:
        mp = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
              "--default_sdk_harness_log_level=WARNING"]  # fmt: skip
        for weight_maps in (False, True):
            times: dict[int, dict[int, list[float]]] = {1: {}, 2: {}}
            for _ in range(args.repeats):
                for workers in (1, 2):
                    for n, root in sizes.items():
                        t = pipeline_seconds(root, out, weight_maps, [*mp, f"--direct_num_workers={workers}"])
                        times[workers].setdefault(n, []).append(t)
            per = {}
            for workers in (1, 2):
                per[workers], tl, ts = slope(times[workers])
                print(f"multi_processing, {workers} worker(s), weight maps {'on ' if weight_maps else 'off'}: "
                      f"{1 / per[workers]:.1f} images/s marginal ({per[workers] * 1e3:.1f} ms/image; "
                      f"T({args.images})={tl:.2f} s, T({args.small})={ts:.2f} s)", flush=True)  # fmt: skip
            print(f"  2 workers / 1 worker throughput: {per[1] / per[2]:.2f}x", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
