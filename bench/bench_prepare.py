"""Benchmark `segops prepare` on 1024x2048 synthetic pairs (run by hand; not a test).

    .venv/bin/python bench/bench_prepare.py [--images 60] [--copies 5] [--small 8] [--repeats 5]
        [--profile] [--code-only] [--skip-workers] [--workdir DIR] 2>/dev/null

Measures, in one process and on the same files:

* the *floor*: the per-image work nobody can skip (decode the label PNG, labelId->trainId LUT,
  class histogram, encode the trainId PNG, serialize the Example with the image bytes as-is), in a
  plain loop over bytes already in memory, with the same primitives the pipeline uses (and a
  second floor that adds the weight map: instanceIds decode, border term, float16 map, zlib),
  and each of them again with every record appended to a new file beside the output, the one
  piece of I/O the sink cannot skip;
* the cost of writing to pages already in the page cache vs to new ones;
* segops' own per-image code (Analyze, then the writer's coder) called in a plain loop, without
  Beam and without writing, against the floor;
* the pipeline's marginal time per image on the DirectRunner: (T(large) - T(small)) / (large -
  small), so the fixed start-up cost (TensorFlow import, Beam graph, worker start) cancels;
  with and without weight maps, in one process (in_memory) and with 1 and 2 worker processes
  (multi_processing).

Each repeat measures a variant right after its reference and keeps the ratio; the median ratio
over repeats is reported (see the comment in main). Targets: without weight maps <= 1.5x the
floor; 2 workers >= 1.7x the throughput of 1. ``--profile`` prints a cProfile of the per-image
work. Worker processes log to stderr; ``2>/dev/null`` keeps the report readable.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

HEIGHT, WIDTH = 1024, 2048


def _link_pairs(src: Path, dst: Path, images: list[Path], rename=lambda stem: stem) -> None:
    """Hard-link image/label pairs of ``src`` into ``dst`` (same layout), renaming frame ids."""
    for img in images:
        stem = img.name[: -len("_leftImg8bit.png")]
        for f in (img, *src.joinpath("gtFine/train", img.parent.name).glob(stem + "_gtFine_*")):
            rel = f.relative_to(src)
            target = dst / rel.parent / f.name.replace(stem, rename(stem), 1)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, target)


def make_data(base: Path, n_unique: int, copies: int, n_small: int) -> None:
    """base/unique: n_unique synthetic pairs; base/large: each of them ``copies`` times (hard
    links with new frame ids); base/small: the first n_small. A large run makes the per-image
    slope stand out from the run-to-run noise of worker start-up."""
    from segops.datasets.synth import generate_dataset

    unique = base / "unique"
    generate_dataset(str(unique), counts={"train": n_unique, "val": 0, "test": 0}, height=HEIGHT, width=WIDTH,
                     seed=7, workers=min(2, os.cpu_count() or 1))  # fmt: skip
    images = sorted((unique / "leftImg8bit/train").glob("*/*_leftImg8bit.png"))
    for k in range(copies):  # <city>_<seq>_<frame> -> <city>_<seq>_<k><frame[2:]>
        _link_pairs(unique, base / "large", images, lambda stem, k=k: f"{stem.rsplit('_', 1)[0]}_{k:02d}"
                                                                      f"{stem.rsplit('_', 1)[1][2:]}")  # fmt: skip
    _link_pairs(unique, base / "small", images[:n_small])


def floor_per_image(root: Path, passes: int, weight_maps: bool = False,
                    write_to: Path | None = None) -> tuple[float, float]:  # fmt: skip
    """(wall, CPU) seconds per image of the unavoidable work, bytes already in memory, averaged
    over ``passes`` passes over the images of ``root``. With ``write_to``, every serialized record
    is also appended to one new file there: as many fresh page-cache pages as the pipeline's
    shards get (``passes`` = copies gives the same volume), which the floor proper leaves out."""
    import cv2

    from segops.core.imageio import decode_instance_png, decode_label_png, encode_mask_png
    from segops.core.labels import LABEL_ID_TO_TRAIN_ID
    from segops.core.records import ExampleFields, encode_example
    from segops.prepare.analyze import keep_large_buffers_on_heap
    from segops.prepare.class_weights import class_weight_lut
    from segops.prepare.weight_maps import instances_from_ids, unet_border_term, weight_map

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

    keep_large_buffers_on_heap()  # the allocator setting the pipeline's workers use
    one(*items[0])  # warm-up (imports)
    sink = open(write_to / "floor.bin", "wb", buffering=0) if write_to else None  # noqa: SIM115
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(passes):
        for item in items:
            record = one(*item)
            if sink:
                sink.write(record)
    if sink:
        sink.close()
    n = passes * len(items)
    wall, cpu = (time.perf_counter() - start) / n, (time.process_time() - start_cpu) / n
    if sink:  # as pipeline_seconds does with its output
        os.unlink(write_to / "floor.bin")
        os.sync()
    return wall, cpu


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process (the runner) and of its finished children (the
    multi_processing workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def pipeline_seconds(root: Path, out: Path, weight_maps: bool, beam_args: list[str]) -> Run:
    """(wall, runner CPU, workers CPU) seconds of one whole run."""
    from segops.prepare.options import PrepareOptions
    from workflows.prepare import run_prepare

    shutil.rmtree(out, ignore_errors=True)
    options = PrepareOptions(input=str(root), output=str(out), weight_maps=weight_maps, shards=2)
    start, (me0, kids0) = time.perf_counter(), _cpu()
    manifest = run_prepare(options, beam_args)
    elapsed, (me1, kids1) = time.perf_counter() - start, _cpu()
    assert manifest["dead_letter"]["total"] == 0, manifest["dead_letter"]
    # Drop the output before the kernel writes it back: background writeback of a large run's
    # shards would otherwise run during (and slow down) whatever is measured next.
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    return Run(elapsed, me1 - me0, kids1 - kids0)


class Run(NamedTuple):
    wall: float
    runner_cpu: float
    workers_cpu: float


def per_image(large: Run, small: Run, n_large: int, n_small: int) -> Run:
    """Marginal cost per image between two run sizes (start-up costs cancel)."""
    return Run(*((lg - sm) / (n_large - n_small) for lg, sm in zip(large, small, strict=True)))


def profile(root: Path, weight_maps: bool) -> None:
    """cProfile of the per-image work (Analyze, then the writer's ExampleCoder), called directly."""
    from segops.datasets.cityscapes import discover
    from segops.prepare.options import PrepareOptions
    from workflows.prepare import AnalyzeFn, ExampleCoder

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


def page_cache_write_cost(directory: Path, size: int = 3_500_000, n: int = 30) -> None:
    """ms per ``size`` bytes to overwrite pages already in the page cache vs to write new ones:
    on a VM that faults fresh guest pages in from the host the second is far dearer."""
    data, path = os.urandom(size), directory / "pagecache.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.pwrite(fd, data, 0)
        start = time.perf_counter()
        for _ in range(n):
            os.pwrite(fd, data, 0)
        same = (time.perf_counter() - start) / n
        start = time.perf_counter()
        for i in range(1, n + 1):
            os.pwrite(fd, data, i * size)
        new = (time.perf_counter() - start) / n
    finally:
        os.close(fd)
        os.unlink(path)
    print(f"page cache, {size / 1e6:.1f} MB write: overwrite cached pages {same * 1e3:.2f} ms, "
          f"new pages {new * 1e3:.2f} ms", flush=True)  # fmt: skip


def segops_code_vs_floor(root: Path, repeats: int, weight_maps: bool) -> None:
    """segops' own per-image code without Beam and without the output write: AnalyzeFn.process
    then the writer's ExampleCoder.encode, called in a loop, against the floor, alternately."""
    from segops.datasets.cityscapes import discover
    from segops.prepare.options import PrepareOptions
    from workflows.prepare import AnalyzeFn, ExampleCoder

    pairs = discover(str(root)).pairs
    analyze = AnalyzeFn(PrepareOptions(input=str(root), output="unused", weight_maps=weight_maps))
    coder, weights = ExampleCoder(), (tuple(np.linspace(0.5, 2.0, 19)) if weight_maps else None)
    analyze.setup()

    def code() -> float:
        start = time.perf_counter()
        for pair in pairs:
            for prepared in analyze.process(pair):
                coder.encode((prepared, weights))
        return (time.perf_counter() - start) / len(pairs)

    code()  # warm-up
    ratios, secs = [], []
    for _ in range(repeats):
        floor = floor_per_image(root, 1, weight_maps)[0]
        secs.append((floor, code()))
        ratios.append(secs[-1][1] / floor)
    print(f"segops code without Beam or output, weight maps {'on ' if weight_maps else 'off'}: "
          f"{statistics.median(c for _, c in secs) * 1e3:.1f} ms/image vs floor"
          f"{' + weight map' if weight_maps else ''} {statistics.median(f for f, _ in secs) * 1e3:.1f} ms/image: "
          f"{statistics.median(ratios):.2f}x (per repeat: {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60, help="distinct synthetic images generated")
    ap.add_argument("--copies", type=int, default=5, help="the large set holds each image this many times")
    ap.add_argument("--small", type=int, default=8, help="images in the small set (slope baseline)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--code-only", action="store_true", help="only segops' per-image code vs the floor (no pipeline)")
    ap.add_argument("--skip-workers", action="store_true", help="skip the 1 vs 2 worker comparison")
    ap.add_argument("--workdir", default=None, help="keep data here (default: a temporary directory)")
    args = ap.parse_args()

    base = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    if not (base / "large").exists():
        t0 = time.perf_counter()
        make_data(base, args.images, args.copies, args.small)
        print(f"generated {args.images} synthetic {HEIGHT}x{WIDTH} pairs in {time.perf_counter() - t0:.1f} s; "
              f"large set {args.images * args.copies} pairs, small set {args.small}")  # fmt: skip
    unique, large, small, out = base / "unique", base / "large", base / "small", base / "out"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip

    page_cache_write_cost(base)
    for weight_maps in (False, True):
        segops_code_vs_floor(unique, args.repeats, weight_maps)
    if args.code_only:
        return
    if args.profile:
        profile(small, weight_maps=False)
        profile(small, weight_maps=True)

    n_l, n_s = args.images * args.copies, args.small
    one = ["--runner=DirectRunner", "--direct_num_workers=1"]
    pipeline_seconds(small, out, True, one)  # warm-up: imports (TensorFlow), caches
    mp = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
          "--default_sdk_harness_log_level=WARNING"]  # fmt: skip
    modes = {"in_memory, 1 worker": one, "multi_processing, 1 worker": [*mp, "--direct_num_workers=1"]}
    if not args.skip_workers:
        modes["multi_processing, 2 workers"] = [*mp, "--direct_num_workers=2"]
    # Each repeat measures the references and every mode back to back and keeps their ratios; the
    # median over repeats is reported. On a shared machine the load drifts by 2x within minutes,
    # which a ratio of adjacent measurements mostly cancels and a global best-of does not.
    # References: the floor; the floor plus appending each record to a new file next to OUT (the
    # write the sink cannot skip: on a VM whose fresh page-cache pages fault in from the host it is
    # not small); with weight maps, the same two with the weight map built as well.
    for weight_maps in (False, True):
        refs = {"floor": (False, None), "floor+write": (False, out)}
        if weight_maps:
            refs |= {"floor+wmap": (True, None), "floor+wmap+write": (True, out)}
        ref_s: dict[str, list[float]] = {k: [] for k in refs}
        runs: dict[str, list[Run]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            out.mkdir(parents=True, exist_ok=True)
            for name, (wm, write_to) in refs.items():
                ref_s[name].append(floor_per_image(unique, args.copies, wm, write_to)[0])
            for mode, beam_args in modes.items():
                runs[mode].append(per_image(pipeline_seconds(large, out, weight_maps, beam_args),
                                            pipeline_seconds(small, out, weight_maps, beam_args), n_l, n_s))  # fmt: skip
        print(f"--- weight maps {'on' if weight_maps else 'off'} ---")
        for name in refs:
            print(f"reference {name:<17} {statistics.median(ref_s[name]) * 1e3:5.1f} ms/image")
        for mode, rs in runs.items():
            wall = statistics.median(r.wall for r in rs)
            print(f"{mode}: {wall * 1e3:.1f} ms/image marginal ({1 / wall:.1f} images/s; CPU per image: "
                  f"runner {statistics.median(r.runner_cpu for r in rs) * 1e3:.1f} ms, worker processes "
                  f"{statistics.median(r.workers_cpu for r in rs) * 1e3:.1f} ms)", flush=True)  # fmt: skip
            if mode.endswith("1 worker"):
                for name in refs:
                    ratios = [r.wall / f for r, f in zip(rs, ref_s[name], strict=True)]
                    print(f"  / {name:<17} {statistics.median(ratios):.2f}x (per repeat: "
                          f"{', '.join(f'{x:.2f}' for x in ratios)})", flush=True)  # fmt: skip
        if not args.skip_workers:
            one_w, two_w = runs["multi_processing, 1 worker"], runs["multi_processing, 2 workers"]
            speedups = [a.wall / b.wall for a, b in zip(one_w, two_w, strict=True)]
            print(f"  2 workers / 1 worker throughput: {statistics.median(speedups):.2f}x "
                  f"(per repeat: {', '.join(f'{x:.2f}' for x in speedups)})", flush=True)  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
