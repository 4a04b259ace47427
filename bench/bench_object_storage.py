"""What a ``segops infer`` on object storage costs with and without one boto3 client per
configuration (segops.core.beam_s3): the same run against a real S3 API server (moto's, on
loopback, as the tests use), in fresh processes, alternating the two so a noisy machine
treats both alike. Prints wall and CPU seconds of each first run and rerun, and their ratios.
Usage: ``python bench/bench_object_storage.py [--images 12] [--repeats 2]``."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' moto server and tiny model helpers

# one child: configure, then a first run and a rerun into a fresh OUT; prints their wall and CPU
CHILD = """
import json, sys, time
sys.path.insert(0, {tests!r})
from segops.core import beam_s3
if not {reuse}:
    beam_s3._install_client_reuse = lambda client_class: None  # Beam's own: a client per operation
from click.testing import CliRunner
from segops.cli import cli
args = ["infer", "s3://{bucket}/model", "s3://{bucket}/data", "s3://{bucket}/{out}", "--split", "val", "--no-crf",
        "--", *{beam_args!r}]
times = []
for _ in range(2):
    wall, cpu = time.perf_counter(), time.process_time()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    times.append((time.perf_counter() - wall, time.process_time() - cpu))
print(json.dumps(times))
"""


def main() -> None:
    from s3server import running_s3_server
    from trainutil import synth_val_and_tiny_unet

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bucket = "segops-bench"
    with tempfile.TemporaryDirectory() as tmp, running_s3_server(Path(tmp)) as s3:
        model, data = synth_val_and_tiny_unet(Path(tmp), args.images, 256, 512, data_seed=1, model_seed=2)
        s3.create_bucket(bucket)
        s3.upload_tree(model, f"s3://{bucket}/model")
        s3.upload_tree(data, f"s3://{bucket}/data")
        env = {**os.environ, **s3.env, "SEGOPS_CACHE_DIR": f"{tmp}/cache",
               "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}  # fmt: skip
        env.pop("AWS_ENDPOINT_URL")  # the endpoint reaches segops through Beam's options, as a user gives it
        runs: dict[bool, list[list[tuple[float, float]]]] = {True: [], False: []}
        for repeat in range(args.repeats):
            for reuse in (False, True):
                code = CHILD.format(tests=str(ROOT / "tests"), reuse=reuse, bucket=bucket,
                                    out=f"out-{reuse}-{repeat}", beam_args=s3.beam_args)  # fmt: skip
                proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(proc.stderr[-3000:])
                runs[reuse].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"segops infer, {args.images} images of 256x512 (tiny U-Net, no CRF), all on moto's S3 server; "
          f"medians of {args.repeats}")
    print(f"{'':28s}{'wall s':>9s}{'CPU s':>9s}{'rerun wall':>12s}{'rerun CPU':>11s}")
    medians = {}
    for reuse, label in ((False, "a client per operation"), (True, "one client (segops)")):
        cols = [statistics.median(run[i][j] for run in runs[reuse]) for i in (0, 1) for j in (0, 1)]
        medians[reuse] = cols
        print(f"{label:28s}{cols[0]:9.1f}{cols[1]:9.1f}{cols[2]:12.1f}{cols[3]:11.1f}")
    ratio = [b / a for a, b in zip(medians[True], medians[False], strict=True)]
    print(f"{'ratio (before / after)':28s}{ratio[0]:9.2f}{ratio[1]:9.2f}{ratio[2]:12.2f}{ratio[3]:11.2f}")


if __name__ == "__main__":
    main()
