"""Would multi-scale test-time augmentation pay on unseen scenes? Score a trained model on a split
at several input scales and with their probabilities averaged (without the CRF), to decide whether a
scale TTA is worth its cost before building it into `segops infer`.

    .venv/bin/python bench/check_multiscale.py RUN DATASET [--scales 0.75,1,1.25,1.5] [--split val]

Each image is resized by each scale (bilinear), run through RUN's best export as `segops infer` runs
it (padding to the stride), and its probabilities resized back; prints mIoU over the classes present
for each scale alone and for the average of all, and the model cost of the average relative to 1x.
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np
from split_scoring import add_confusion, present_iou, split_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("dataset")
    parser.add_argument("--scales", default="0.75,1,1.25,1.5")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]

    from segops.inference.options import PredictOptions
    from segops.inference.sources import open_source
    from segops.inference.tiling import predict_probabilities

    source = open_source(os.path.join(args.run, "best"))
    model = source.load()
    n = source.info.num_classes
    variants = {f"{s:g}x": [s] for s in scales} | {"average": scales}
    confusion = {k: np.zeros((n, n), np.int64) for k in variants}
    images = 0
    for _, rgb, truth in split_pairs(args.dataset, args.split):
        h, w = truth.shape
        probabilities = {}
        for s in scales:
            scaled = rgb if s == 1 else cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
            p = predict_probabilities(model, [scaled], source.info.stride, PredictOptions())[0]
            probabilities[s] = p if s == 1 else cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        images += 1
        for name, used in variants.items():
            add_confusion(confusion[name], truth, sum(probabilities[s] for s in used).argmax(-1))
    print(f"{args.run}: {images} {args.split} images; the average costs {sum(s * s for s in scales):.2f}x the "
          "model's 1x call")  # fmt: skip
    for name in variants:
        miou, per_class = present_iou(confusion[name])
        print(f"{name:>8}: mIoU {miou:.4f}  per class {per_class}")


if __name__ == "__main__":
    main()
