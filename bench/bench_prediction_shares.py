"""Where a trained model's val predictions go, and what undoing its class weights would give (run by hand).

    .venv/bin/python bench/bench_prediction_shares.py RUN PREPARED [--camvid ../shared/datasets/camvid]
        [--scheme median_frequency] [--taus 0,0.25,0.5,1]

Loads RUN's default export (``best``), predicts the CamVid val images at full size and prints, per tau,
the val mIoU (classes present) of ``argmax(logits - tau * log(class weight))`` (tau 0: the model
as trained; tau 1: the weighted CE's class weights divided out of its posteriors), then each
class's share of the predictions against its share of the truth. A diagnostic for a weighted
recipe that over-predicts rare classes (docs/benchmarks.md, "U-demo").
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("prepared")
    ap.add_argument("--camvid", default=str(ROOT.parent / "shared/datasets/camvid"))
    ap.add_argument("--scheme", default="median_frequency")
    ap.add_argument("--taus", default="0,0.25,0.5,1")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from segops.core import labels, layout
    from segops.core.metrics import confusion_matrix, iou_per_class
    from segops.inference.discovery import cityscapes_label_for
    from segops.inference.tiling import reflect_pad
    from segops.models import export_dir

    model = export_dir.load_keras_model(args.run)  # the run's default export, in safe mode
    weights = np.array(json.loads(Path(f"{args.prepared}/class_weights.json").read_text())["schemes"][args.scheme])
    log_w = np.log(np.where(weights > 0, weights, 1.0))
    n = len(weights)
    taus = [float(t) for t in args.taus.split(",")]
    conf = {t: np.zeros((n, n), np.int64) for t in taus}
    for path in sorted(glob.glob(f"{args.camvid}/{layout.IMAGE_DIR}/val/*/*{layout.IMAGE_SUFFIX}")):
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB).astype(np.float32)
        truth = labels.to_train_ids(cv2.imread(cityscapes_label_for(path), cv2.IMREAD_UNCHANGED))
        h, w = image.shape[:2]
        padded = reflect_pad(image, 32)  # as infer pads; every segops stride divides 32
        logits = np.asarray(model(padded[None], training=False))[0, :h, :w]
        for t in taus:
            conf[t] += confusion_matrix(truth, np.argmax(logits - t * log_w, -1), n)
    present = np.flatnonzero(conf[taus[0]].sum(1))  # the classes in the ground truth (CamVid's 11)
    for t in taus:
        iou = iou_per_class(conf[t])
        print(f"tau {t:g}: mIoU {iou[present].mean():.4f}  " + " ".join(f"{i}:{iou[i]:.2f}" for i in present))
    c = conf[taus[0]]
    print("predicted share " + " ".join(f"{i}:{c.sum(0)[i] / c.sum():.3f}" for i in present))
    print("true share      " + " ".join(f"{i}:{c.sum(1)[i] / c.sum():.3f}" for i in present))


if __name__ == "__main__":
    main()
