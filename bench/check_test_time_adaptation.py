"""Would adapting a trained model to the images it labels pay on unseen scenes? Score trained
exports on a split, without the CRF, as exported and with three test-time changes that need no
labels, to decide whether `segops infer` should make any of them a default or an option.

    .venv/bin/python bench/check_test_time_adaptation.py DATASET RUN [RUN ...]
        [--alphas 0.95,0.8,0.5] [--split val]

- **batch-norm statistics of the image** (Schneider et al. 2020, "Improving robustness against
  common corruptions by covariate shift adaptation"; Nado et al. 2020, "Evaluating prediction-time
  batch normalization"): every BatchNormalization layer normalises by
  a * moving + (1 - a) * the statistics of the image being labelled (the variance of the pooled
  pixels, so the spread between the two means counts), for each a in ``--alphas``; a = 1 is the
  export. A 1024x2048 frame has enough pixels per channel for stable statistics.
- **output stride 8** (DeepLabV3, Chen et al. 2017, section 4.1: train at 16, evaluate at 8): a
  `deeplabv3plus` export rebuilt at output stride 8 (ASPP rates doubled, the last encoder stage
  dilated instead of strided) with the same weights; prints the model's CPU time for both.
- **colour statistics matched to the training split**: each image's per-channel mean (``mean``)
  or mean and standard deviation (``mean+std``) moved to the training images' average before the
  model sees it (Reinhard-style colour transfer in RGB).

Prints mIoU over the classes present and per class for each run and variant.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from split_scoring import batch_norm_layers, score_model, split_pairs


def mix_statistics(layers: list, alpha: float) -> None:
    """Make every layer normalise by alpha * moving + (1 - alpha) * this batch's statistics
    (alpha = 1 restores the layer's own call)."""
    from keras import ops

    def mixed_call(layer):
        def call(inputs, training=None, mask=None):
            x = ops.cast(inputs, "float32")
            axes = [i for i in range(len(x.shape)) if i != layer.axis % len(x.shape)]
            mean, variance = ops.moments(x, axes=axes)
            moving_mean = ops.cast(layer.moving_mean, "float32")
            moving_variance = ops.cast(layer.moving_variance, "float32")
            mixed_mean = alpha * moving_mean + (1 - alpha) * mean
            mixed_variance = (alpha * (moving_variance + (moving_mean - mixed_mean) ** 2)
                              + (1 - alpha) * (variance + (mean - mixed_mean) ** 2))  # fmt: skip
            out = ops.batch_normalization(x, mixed_mean, mixed_variance, axis=layer.axis,
                                          offset=layer.beta, scale=layer.gamma, epsilon=layer.epsilon)  # fmt: skip
            return ops.cast(out, layer.compute_dtype)

        return call

    for layer in layers:
        layer.call = mixed_call(layer) if alpha < 1 else type(layer).call.__get__(layer)


def channel_statistics(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's per-channel RGB mean and standard deviation, averaged over its images."""
    stats = [(rgb.reshape(-1, 3).mean(0), rgb.reshape(-1, 3).std(0)) for _, rgb, _ in split_pairs(dataset, split)]
    return np.mean([m for m, _ in stats], axis=0), np.mean([s for _, s in stats], axis=0)


def rebuilt_at_output_stride_8(model, export: str):
    """The `deeplabv3plus` export's network built at output stride 8, carrying its weights."""
    from segops.models import build_model

    with open(os.path.join(export, "model.json")) as f:
        hparams = json.load(f)["training"]["hparams"]
    dilated = build_model("deeplabv3plus", **(hparams | {"output_stride": 8, "backbone_weights": "none"}))
    dilated.set_weights(model.get_weights())
    return dilated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--alphas", default="0.95,0.8,0.5")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()

    from segops.models import export_dir, layers  # noqa: F401  (layers: registers the custom layers)

    train_mean, train_std = channel_statistics(args.dataset, "train")
    split_mean, _ = channel_statistics(args.dataset, args.split)
    print(f"RGB mean: train {np.round(train_mean, 1).tolist()}, {args.split} {np.round(split_mean, 1).tolist()}")

    def mean_moved(x: np.ndarray) -> np.ndarray:
        return np.clip(x - x.reshape(-1, 3).mean(0) + train_mean, 0, 255)

    def mean_std_moved(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, 3)
        return np.clip((x - flat.mean(0)) / flat.std(0) * train_std + train_mean, 0, 255)

    for run in args.runs:
        export = os.path.join(run, "best")
        model = export_dir.load_keras_model(export)
        info = export_dir.load_info(export)
        n, stride = info.num_classes, info.stride

        def report(variant: str, result: tuple[float, list[float], float], run: str = run) -> None:
            print(f"{run}: {variant:>22}: mIoU {result[0]:.4f} {result[1]}  model CPU {result[2]:.1f} s", flush=True)

        report("as exported", score_model(model, args.dataset, args.split, n, stride))
        bn = batch_norm_layers(model)
        for alpha in [float(a) for a in args.alphas.split(",")]:
            mix_statistics(bn, alpha)
            report(f"BN statistics a={alpha:g}", score_model(model, args.dataset, args.split, n, stride))
        mix_statistics(bn, 1.0)
        if info.architecture == "deeplabv3plus" and stride == 16:
            report("output stride 8", score_model(rebuilt_at_output_stride_8(model, export), args.dataset, args.split, n, 16))
        report("colour: mean", score_model(model, args.dataset, args.split, n, stride, mean_moved))
        report("colour: mean+std", score_model(model, args.dataset, args.split, n, stride, mean_std_moved))


if __name__ == "__main__":
    main()
