"""Soak test of crash safety (run by hand; not a test): random ``kill -9`` of prepare and infer
runs, then a clean rerun, and a count of the images lost and duplicated.

    nice -n 15 .venv/bin/python bench/soak.py [--trials 20] [--work DIR] [--seed 0]

Set-up (once, under --work): a synthetic dataset (``--train`` + ``--val`` pairs at ``--size``)
with one image emptied (a bad pair prepare must dead-letter), a tiny exported U-Net, and one
uninterrupted prepare and infer run each, which time the kill window. Then per trial, one of:

* ``prepare``: `segops prepare` with a random shard count, SIGKILLed 1-3 times, then run to
  completion. Each kill comes either at a random moment of the run ("timed") or at a random
  moment within 1.5 s of the run starting to write ("triggered": under load most of a run is
  start-up, and the moments where outputs change are the ones that matter). Checked: every good pair is in the shards exactly
  once, only this run's shards exist, no temporary file (``*.tmp-*``, ``beam-temp-*``) is left
  and manifest.json is present.
* ``infer``: some val images are touched (new mtime: they must be redone), then `segops infer`
  into the same OUT (the nightly pattern) is SIGKILLed 1-3 times, then run to completion.
* ``overlap``: as ``infer``, but two runs start at once and one of them (or both) is killed.

Checked after each infer trial: one row per image (duplicated = rows beyond the first of an
image), each row with the image's current size and mtime (lost = images without such a row) and
its three mask PNGs present and decodable. Every process group is killed with SIGKILL, so a
Beam worker process dies with its driver. Prints one JSON line per trial and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def segops(*args: str) -> list[str]:
    return [sys.executable, "-m", "segops.cli", *args]


def start(cmd: list[str]) -> subprocess.Popen:
    # stderr to a file, not a pipe: a killed run's pipe is never read, and a full one would block it
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed with the process object
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL the process group; True when it was still running."""
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


def finish(proc: subprocess.Popen, what: str) -> None:
    proc.wait()
    if proc.returncode != 0:
        proc.log.seek(0)  # type: ignore[attr-defined]
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{proc.log.read()[-3000:]}")  # type: ignore[attr-defined]


def setup(work: Path, args: argparse.Namespace) -> tuple[Path, Path, set[str]]:
    import keras

    from segops.core import labels
    from segops.core.options import parse_hw
    from segops.datasets.synth import generate_dataset
    from segops.models import build_model, export_dir

    h, w = parse_hw(args.size)
    data, model = work / "data", work / "model"
    if not data.exists():
        generate_dataset(str(data), {"train": args.train, "val": args.val, "test": 0}, height=h, width=w, seed=1)
        victim = sorted((data / "leftImg8bit" / "train").rglob("*.png"))[0]
        victim.write_bytes(b"")  # a bad pair: prepare dead-letters it
    if not (model / "model.json").exists():
        keras.utils.set_random_seed(0)
        export_dir.export_model(build_model("unet", depth=2, base_filters=4), str(model),
                            export_dir.ModelInfo("unet", labels.NUM_CLASSES, (h, w), 4))  # fmt: skip
    good = {str(p.relative_to(data / "leftImg8bit")) for p in (data / "leftImg8bit").rglob("*.png") if p.stat().st_size}
    return data, model, good


# --- checks --------------------------------------------------------------------------------------


def temporaries(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp-" in p.name or p.name.startswith("beam-temp-"))


def check_prepare(out: Path, good: set[str], shards: int) -> dict[str, int]:
    import tensorflow as tf

    from segops.core.records import decode_example

    files = sorted(str(p) for p in out.glob("*/*.tfrecord"))
    sources = [decode_example(r.numpy())["source"].split("leftImg8bit/", 1)[-1] for r in tf.data.TFRecordDataset(files)]
    counts = Counter(sources)
    foreign = [f for f in files if not f.endswith(f"-of-{shards:05d}.tfrecord")]
    return {"lost": len(good - set(counts)), "duplicated": sum(n - 1 for n in counts.values()),
            "unexpected": len(set(counts) - good), "stale_shards": len(foreign),
            "temporaries": len(temporaries(out)), "manifest": int((out / "manifest.json").exists())}  # fmt: skip


def check_infer(out: Path, images: list[Path]) -> dict[str, int]:
    import cv2

    from segops.inference.table import read_metrics

    rows = read_metrics(str(out), ["path", "input_size", "input_mtime"])
    paths = rows.column("path").to_pylist()
    current = {str(p): (p.stat().st_size, p.stat().st_mtime) for p in images}
    fresh = {p for p, s, m in zip(paths, rows.column("input_size").to_pylist(), rows.column("input_mtime").to_pylist(),
                                  strict=True) if p in current and (s, m) == current[p]}  # fmt: skip
    masks = list((out / "masks").rglob("*.png"))
    bad_masks = sum(1 for m in masks if cv2.imread(str(m), cv2.IMREAD_UNCHANGED) is None)
    left = temporaries(out)
    return {"lost": len(set(current) - fresh), "duplicated": len(paths) - len(set(paths)),
            "masks": len(masks), "bad_masks": bad_masks,
            "temporaries": len(left), "staging_dirs": len(list((out / ".staging").glob("*")))}  # fmt: skip


# --- trials --------------------------------------------------------------------------------------


def killed_runs(cmds: list[list[str]], rng: random.Random, window: float, phase, busy) -> list[str]:
    """Start ``cmds`` at once and SIGKILL each one, half of them after a random delay within
    ``window`` ("timed"), half at a random moment within 1.5 s of reaching their write phase
    (``busy(i, t0)``: "triggered", so that the moments where outputs change are hit often).
    Returns "<seconds>s:<phase>" for the runs still running when killed (``phase(i, t0)`` says
    what run ``i`` was doing, from its outputs)."""
    procs = [start(c) for c in cmds]
    t0, hits = time.time(), []
    plans = sorted((rng.uniform(0.2, window), i, rng.random() < 0.5) for i in range(len(procs)))
    for delay, i, triggered in plans:
        if triggered:
            while procs[i].poll() is None and not busy(i, t0) and time.time() < t0 + 3 * window:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            time.sleep(max(0.0, t0 + delay - time.time()))
        what = phase(i, t0)
        if kill(procs[i]):
            hits.append(f"{time.time() - t0:.1f}s:{what}")
    return hits


def _fresh(paths, t0: float) -> bool:
    return any(p.stat().st_mtime >= t0 for p in paths if p.exists())


def prepare_phase(out: Path, t0: float) -> str:
    if _fresh(out.glob("*/beam-temp-*"), t0):
        return "writing-shards"
    if (out / "manifest.json").exists():
        return "startup"  # CleanOutput has not run yet
    return "finalizing" if _fresh(out.glob("*/*.tfrecord"), t0) or (out / "stats.json").exists() else "reading"


def infer_phase(out: Path, run_id: str, t0: float) -> str:
    if (out / ".staging" / run_id).exists():
        return "staging-rows"
    if _fresh((out / "masks").rglob("*.png"), t0):
        return "writing-masks"
    return "startup-or-planning"


def trial_prepare(n: int, rng: random.Random, data: Path, out: Path, good: set[str], window: float) -> dict:
    shards = rng.choice([1, 2, 3])
    cmd = segops("prepare", str(data), str(out), "--shards", str(shards))
    phase = lambda i, t0: prepare_phase(out, t0)  # noqa: E731
    busy = lambda i, t0: prepare_phase(out, t0) != "startup"  # noqa: E731
    kills = [d for _ in range(rng.randint(1, 3)) for d in killed_runs([cmd], rng, window, phase, busy)]
    proc = start(cmd)
    finish(proc, "final prepare")
    return {"trial": n, "kind": "prepare", "shards": shards, "kills": kills, **check_prepare(out, good, shards)}


def trial_infer(n: int, kind: str, rng: random.Random, data: Path, model: Path, out: Path, window: float) -> dict:
    images = sorted((data / "leftImg8bit" / "val").rglob("*.png"))
    touched = rng.sample(images, rng.randint(1, len(images)))
    now = time.time()
    for p in touched:  # changed since the last run: must be redone
        os.utime(p, (now, now))
    base = ["infer", str(model), str(data), str(out), "--split", "val"]
    kills = []
    for k in range(rng.randint(1, 3)):
        ids = [f"t{n}-k{k}-{j}" for j in range(2 if kind == "overlap" else 1)]
        cmds = [segops(*base, "--run-id", run_id) for run_id in ids]
        if kind == "overlap" and rng.random() < 0.5:  # one killed, the other runs to the end
            survivor = start(cmds[0])
            kills += killed_runs(cmds[1:], rng, window, lambda i, t0, ids=ids: infer_phase(out, ids[1 + i], t0),
                                 lambda i, t0, ids=ids: infer_phase(out, ids[1 + i], t0) != "startup-or-planning")
            finish(survivor, "overlapping infer")
        else:
            kills += killed_runs(cmds, rng, window, lambda i, t0, ids=ids: infer_phase(out, ids[i], t0),
                                 lambda i, t0, ids=ids: infer_phase(out, ids[i], t0) != "startup-or-planning")
    finish(start(segops(*base, "--run-id", f"t{n}-final")), "final infer")
    return {"trial": n, "kind": kind, "touched": len(touched), "kills": kills, **check_infer(out, images)}


def timed(cmd: list[str]) -> float:
    t0 = time.time()
    finish(start(cmd), " ".join(cmd[2:4]))
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/segops-soak"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=8)
    ap.add_argument("--val", type=int, default=8)
    ap.add_argument("--size", default="64x128")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data, model, good = setup(args.work, args)
    prep_out, infer_out = args.work / "prepared", args.work / "inferred"
    t_prep = timed(segops("prepare", str(data), str(prep_out), "--shards", "2"))
    t_infer = timed(segops("infer", str(model), str(data), str(infer_out), "--split", "val", "--run-id", "calibrate"))
    print(json.dumps({"setup": {"good_pairs": len(good), "prepare_s": round(t_prep, 1), "infer_s": round(t_infer, 1)}}))
    rng = random.Random(args.seed)
    results, t0 = [], time.time()
    for n in range(args.trials):
        kind = rng.choice(["prepare", "infer", "overlap"])
        if kind == "prepare":
            result = trial_prepare(n, rng, data, prep_out, good, 1.1 * t_prep)
        else:
            result = trial_infer(n, kind, rng, data, model, infer_out, 1.1 * t_infer)
        results.append(result)
        print(json.dumps(result), flush=True)
    kills = sum(len(r["kills"]) for r in results)
    phases = Counter(f"{r['kind'] if r['kind'] == 'prepare' else 'infer'}:{k.split(':', 1)[1]}"
                     for r in results for k in r["kills"])  # fmt: skip
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "trials": len(results),
        "by_kind": dict(Counter(r["kind"] for r in results)),
        "kills": kills,
        "kills_by_phase": dict(sorted(phases.items())),
        "lost": sum(r["lost"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results),
        "prepare_temporaries_left": sum(r["temporaries"] for r in results if r["kind"] == "prepare"),
        "prepare_stale_shards": sum(r["stale_shards"] for r in results if r["kind"] == "prepare"),
        "infer_bad_masks": sum(r["bad_masks"] for r in results if r["kind"] != "prepare"),
        "infer_temporaries_after_last_trial": temporaries(infer_out),
        "infer_staging_dirs_after_last_trial": len(list((infer_out / ".staging").glob("*"))),
        "minutes": round((time.time() - t0) / 60, 1),
    }
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    main()
