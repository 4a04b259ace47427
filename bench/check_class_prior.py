"""How much of a model's error on unseen scenes is the class-weight prior, measured without
retraining: weighted cross-entropy learns ``p_w(c|x) ~ w_c p(c|x)``, so subtracting
``alpha * log(w_c)`` from the log-probabilities undoes a share ``alpha`` of the weighting. If val mIoU
rises with alpha, milder weights (``segops train --class-weight-power``) are worth a training run.

    .venv/bin/python bench/check_class_prior.py RUN PREPARED DATASET [--split val] [--export best]

RUN: a `segops train` output; PREPARED: the prepared data it trained on (its class_weights.json);
DATASET: the raw Cityscapes-layout dataset to score (e.g. ../shared/datasets/camvid). Prints val mIoU
over the classes present, without the CRF, for alpha in 0, 0.25, 0.5, 0.75, 1, and per-class IoU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from split_scoring import add_confusion, present_iou, split_pairs

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def correction_cpu_seconds(num_classes: int, repeats: int = 5) -> float:
    """CPU seconds of segops.inference.prior.PriorCorrected on one 1024x2048 probability map."""
    from segops.inference.prior import PriorCorrected

    probs = np.random.default_rng(0).dirichlet(np.ones(num_classes), (1, 1024, 2048)).astype(np.float32)

    class Fixed:
        def predict(self, batch: np.ndarray) -> np.ndarray:
            return probs

    corrected = PriorCorrected(Fixed(), np.linspace(1.0, 0.2, num_classes, dtype=np.float32))
    corrected.predict(probs)
    start = time.process_time()
    for _ in range(repeats):
        corrected.predict(probs)
    return (time.process_time() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("prepared")
    parser.add_argument("dataset")
    parser.add_argument("--split", default="val")
    parser.add_argument("--export", default="best")
    args = parser.parse_args()

    from segops.inference.options import PredictOptions
    from segops.inference.sources import open_source
    from segops.inference.tiling import predict_probabilities

    source = open_source(os.path.join(args.run, args.export))
    model = source.load()
    with open(os.path.join(args.run, args.export, "model.json")) as f:
        exported = json.load(f)
    scheme, power = exported["training"]["class_weight_scheme"], exported["training"].get("class_weight_power", 1.0)
    with open(os.path.join(args.prepared, "class_weights.json")) as f:
        weights = np.asarray(json.load(f)["schemes"][scheme])
    log_w = power * np.log(np.where(weights > 0, weights, 1.0))  # the weights the model trained with
    n = len(weights)
    confusion = {a: np.zeros((n, n), np.int64) for a in ALPHAS}
    images = 0
    for _, rgb, truth in split_pairs(args.dataset, args.split):
        log_p = np.log(np.maximum(predict_probabilities(model, [rgb], source.info.stride, PredictOptions())[0], 1e-12))
        images += 1
        for alpha in ALPHAS:
            add_confusion(confusion[alpha], truth, (log_p - alpha * log_w).argmax(-1))
    print(f"{args.run} ({exported['model_id']}), {images} {args.split} images, scheme {scheme}^{power:g}")
    print(f"--prior-correction's own cost on a 1024x2048 frame: {correction_cpu_seconds(n):.3f} CPU-s")
    for alpha in ALPHAS:
        miou, per_class = present_iou(confusion[alpha])
        print(f"alpha {alpha:.2f}: mIoU {miou:.4f}  per class {per_class}")


if __name__ == "__main__":
    main()
