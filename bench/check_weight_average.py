"""Would averaging the weights of the last epochs (SWA) generalise better to unseen scenes than the
best epoch? Paired on one run, so the run-to-run spread of a 30-minute budget does not hide it.

    .venv/bin/python bench/check_weight_average.py train PREP RUN [--time-budget 30] [--set NAME=VALUE ...]
    .venv/bin/python bench/check_weight_average.py score RUN DATASET [--split val] [--bn-batches 100]

``train`` runs ``segops train PREP RUN --time-budget M`` with the defaults (and any ``--set``
values), through :func:`segops.training.loop.train`, and keeps every epoch's weights in
``RUN/snapshots/epoch-NNNN.npz`` (the run's own checkpoints keep only the last and the best).

``score`` scores, on DATASET's split, without the CRF (mIoU over the classes present): the best
epoch, the last, and the uniform average of the last k epochs for every k >= 2, each with the
averaged batch-norm statistics and with statistics recomputed on the training images (the
network in training mode over ``--bn-batches`` batches of two, a cumulative average as
torch.optim.swa_utils.update_bn does). Izmailov et al. 2018 (SWA) and Cha et al. 2021 (SWAD) find
such averages in flatter minima that hold better under a domain shift.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
from split_scoring import batch_norm_layers, score_model, split_pairs

SNAPSHOTS = "snapshots"


def train(prepared: str, run: str, minutes: float, flags: list[str]) -> None:
    import keras

    from segops.training.loop import train as train_run
    from segops.training.options import TrainOptions

    os.makedirs(os.path.join(run, SNAPSHOTS), exist_ok=True)

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            path = os.path.join(run, SNAPSHOTS, f"epoch-{epoch + 1:04d}.npz")
            np.savez(path, *self.model.get_weights())

    extra = {name: parse_value(value) for name, value in (item.split("=", 1) for item in flags)}
    opts = TrainOptions.from_flat(prepared=prepared, out=run, time_budget=minutes or None, verbose=2, **extra)
    result = train_run(opts, extra_callbacks=[Snapshot()])
    print(f"trained {result.epochs_trained} epochs")


def parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_snapshot(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def recompute_bn(model, dataset: str, stride: int, batches: int, seed: int = 0) -> None:
    """Moving statistics as the cumulative average over ``batches`` training batches of two."""
    from segops.inference.tiling import reflect_pad

    images = [rgb for _, rgb, _ in split_pairs(dataset, "train")]
    order = np.random.default_rng(seed).permutation(len(images))
    layers = batch_norm_layers(model)
    saved = [layer.momentum for layer in layers]
    for t in range(batches):
        for layer in layers:
            layer.momentum = t / (t + 1)  # moving = (t * moving + batch) / (t + 1)
        pick = [order[(2 * t + j) % len(images)] for j in range(2)]
        batch = np.stack([reflect_pad(images[i], stride) for i in pick]).astype(np.float32)
        model(batch, training=True)
    for layer, momentum in zip(layers, saved, strict=True):
        layer.momentum = momentum


def score(run: str, dataset: str, split: str, bn_batches: int) -> None:
    from segops.models import export_dir, layers  # noqa: F401  (layers: registers the custom layers)

    model = export_dir.load_keras_model(os.path.join(run, "best"))
    info = export_dir.load_info(os.path.join(run, "best"))
    n, stride, best = info.num_classes, info.stride, info.metrics["epoch"]
    paths = sorted(glob.glob(os.path.join(run, SNAPSHOTS, "epoch-*.npz")))
    epochs = [int(re.search(r"epoch-(\d+)", p).group(1)) for p in paths]
    snaps = {e: load_snapshot(p) for e, p in zip(epochs, paths, strict=True)}
    print(f"{run}: epochs {epochs}, best by val during training: {best}")
    variants: list[tuple[str, list[int]]] = [(f"best (epoch {best})", [best]), (f"last (epoch {epochs[-1]})", [epochs[-1]])]
    variants += [(f"average of last {k}", epochs[-k:]) for k in range(2, len(epochs) + 1)]
    for name, used in variants:
        weights = [np.mean([snaps[e][i] for e in used], axis=0).astype(snaps[used[0]][i].dtype)
                   for i in range(len(snaps[used[0]]))]  # fmt: skip
        model.set_weights(weights)
        miou, per_class, _ = score_model(model, dataset, split, n, stride)
        line = f"{name:>24}: mIoU {miou:.4f} {per_class}"
        if len(used) > 1 and bn_batches:
            recompute_bn(model, dataset, stride, bn_batches)
            miou_bn, per_class_bn, _ = score_model(model, dataset, split, n, stride)
            line += f"\n{'':>24}  BN recomputed: {miou_bn:.4f} {per_class_bn}"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("prepared")
    t.add_argument("run")
    t.add_argument("--time-budget", type=float, default=30.0)
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="another TrainOptions value by its flat name (epochs=2); repeatable")
    s = sub.add_parser("score")
    s.add_argument("run")
    s.add_argument("dataset")
    s.add_argument("--split", default="val")
    s.add_argument("--bn-batches", type=int, default=100)
    args = parser.parse_args()
    if args.command == "train":
        train(args.prepared, args.run, args.time_budget, args.set)
    else:
        score(args.run, args.dataset, args.split, args.bn_batches)


if __name__ == "__main__":
    sys.exit(main())
