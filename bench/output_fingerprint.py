"""Fingerprint every deterministic output of the CLI stages (run by hand; not a test).

    .venv/bin/python bench/output_fingerprint.py WORKDIR [--model DIR] > fingerprints.txt

Runs ``segops synth``, ``prepare``, ``train`` (2 tiny epochs), ``infer`` (fixed ``--run-id``)
and ``report`` through the installed CLI into WORKDIR, then prints one ``sha256  path`` line per
output file. Run it on two commits and ``diff`` the outputs to show that a refactor leaves the
outputs byte-identical. ``--model DIR`` makes infer and report use an existing trained model
instead (so infer is compared on the same weights even where training is not bit-reproducible
across processes). Files whose content records a time, a duration or an absolute path of the
run (manifests, TensorBoard logs, SavedModel fingerprints, checkpoints) are listed as
``(varies)`` instead of hashed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

# substrings of paths whose bytes depend on the clock, the process or the run directory
VARIES = ("manifest.json", "/logs/", "/_delta_log/", "fingerprint.pb", "/checkpoints/", "state.json", "segops_synth.json",
          "/saved_model/", "model.keras", "model.json", "history.", "report.html")

# wall-clock numbers, and the input files' mtimes (two work directories never share them)
TIMING_COLUMNS = ("inference_ms", "crf_ms", "input_mtime")


def parquet_digest(path: Path, work: Path) -> str:
    """Hash of a results part file's rows without the per-image timings (wall-clock numbers) and
    with the work directory's absolute path replaced, so two work directories compare."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    rows = table.drop_columns([c for c in TIMING_COLUMNS if c in table.column_names]).to_pylist()
    rows.sort(key=lambda row: row["path"])  # in Python: pyarrow cannot sort the binary_view columns Delta writes
    return hashlib.sha256(repr(rows).replace(str(work), "WORKDIR").encode()).hexdigest()


def segops(*args: str) -> None:
    exe = Path(sys.executable).with_name("segops")
    subprocess.run([str(exe), *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--model", default=None, help="use this trained model for infer/report")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    segops("synth", str(work / "data"), "--train", "6", "--val", "3", "--test", "1", "--size", "64x128")
    segops("prepare", str(work / "data"), str(work / "prepared"), "--weight-maps")
    model = args.model
    if model is None:
        model = str(work / "model")
        segops("train", str(work / "prepared"), model, "--epochs", "2", "--crop", "64x128", "--depth", "2",
               "--base-filters", "8", "--batch-size", "2", "--class-weights", "enet")
    segops("infer", model, str(work / "data"), str(work / "infer"), "--split", "val", "--run-id", "fixed")
    segops("infer", model, str(work / "data"), str(work / "infer_nocrf"), "--split", "val", "--no-crf",
           "--run-id", "fixed")
    segops("report", "--infer", str(work / "infer"), "--prepared", str(work / "prepared"), "--model", model,
           "--out", str(work / "report"))
    for root, _dirs, files in sorted(os.walk(work)):
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(work).as_posix()
            if any(v in "/" + rel for v in VARIES):
                print(f"(varies)  {rel}")
            elif rel.endswith(".parquet"):
                print(f"{parquet_digest(path, work)}  {re.sub(r'part-[0-9a-f]+', 'part-*', rel)} (rows, timings dropped)")
            else:
                print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}")


if __name__ == "__main__":
    main()
