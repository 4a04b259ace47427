"""CPU cost of CRF settings side by side on the same 1024x2048 probabilities, one core (run by
hand; not a test).

    taskset -c 0 .venv/bin/python bench/bench_crf_cost.py MODEL_DIR \\
        [--images 'GLOB'] [--count 3] [--setting NAME:key=value,... ...]

The model labels each frame once (``predict_probabilities``, infer's defaults); then each setting
(``CRFParams`` fields, as in bench_crf_real.py; ``default`` always runs) refines the same
probabilities, twice per frame, alternating settings so a change in the machine's pace hits all
alike. Prints the median CPU seconds per frame of each setting and its ratio to ``default``.
Frames default to the synthetic 1024x2048 set bench_infer.py writes.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # one core: the CRF's cost per core
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from bench_crf_real import settings_with_default  # noqa: E402

from segops.core import imageio  # noqa: E402
from segops.inference import crf  # noqa: E402
from segops.inference.model import ServingModel  # noqa: E402
from segops.inference.options import PredictOptions  # noqa: E402
from segops.inference.tiling import predict_probabilities  # noqa: E402
from segops.models import export_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--images", default="/tmp/segops_bench/synth1024/leftImg8bit/*/*/*.png")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--setting", action="append", default=[])
    args = parser.parse_args()
    cv2.setNumThreads(1)
    settings = settings_with_default(args.setting)
    model, stride = ServingModel(args.model), export_dir.load_info(args.model).stride
    seconds: dict[str, list[float]] = {name: [] for name, _ in settings}
    paths = sorted(glob.glob(args.images))[: args.count]
    for path in paths:
        rgb = imageio.decode_rgb_image(Path(path).read_bytes())
        probs = predict_probabilities(model, [rgb], stride, PredictOptions())[0]
        for _ in range(2):
            for name, params in settings:
                start = time.process_time()
                crf.refine(probs, rgb, params)
                seconds[name].append(time.process_time() - start)
    base = float(np.median(seconds["default"]))
    print(f"{len(paths)} frames of {rgb.shape[1]}x{rgb.shape[0]}, model {args.model}")
    for name, params in settings:
        median = float(np.median(seconds[name]))
        print(f"{name:<12} {median:6.3f} CPU-s per frame  x{median / base:.3f}  {params}")


if __name__ == "__main__":
    main()
