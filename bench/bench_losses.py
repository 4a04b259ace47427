"""Cost of each loss term of `segops train --loss` (run by hand; not a test).

    .venv/bin/python bench/bench_losses.py [--batch 2] [--size 256x512] [--repeats 5]

For every term of segops.training.options.LOSS_TERMS: the median wall time of the loss and its
gradient with respect to the logits, in one compiled TensorFlow step (tf.function, as Keras'
train_step), on random float32 logits (N, H, W, 19) and labels with 10% ignore pixels. The
network's own step is not included; compare with bench/bench_train_step.py. Prints one JSON
line per term and a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from segops.core.labels import NUM_CLASSES
from segops.core.options import parse_hw
from segops.training.options import LOSS_TERMS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tensorflow as tf

    from segops.training.losses import SegmentationLoss

    h, w = parse_hw(args.size)
    rng = np.random.default_rng(0)
    logits = tf.Variable(rng.normal(0, 2, (args.batch, h, w, NUM_CLASSES)).astype("float32"))
    labels = rng.integers(0, NUM_CLASSES, (args.batch, h, w)).astype("int32")
    labels[rng.random(labels.shape) < 0.1] = 255
    labels = tf.constant(labels)
    rows = []
    for term in LOSS_TERMS:
        loss_fn = SegmentationLoss(term)

        @tf.function
        def step(loss_fn=loss_fn):
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, logits)
            return loss, tape.gradient(loss, logits)

        step()  # trace
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loss, grad = step()
            float(loss), grad.numpy()
            times.append(time.perf_counter() - start)
        row = {"term": term, "batch": args.batch, "size": args.size, "ms": round(1000 * statistics.median(times), 1),
               "loss": round(float(loss), 4), "machine": f"{platform.machine()} x{__import__('os').cpu_count()}"}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'term':<8} {'ms (loss + gradient)':>21}")
    for row in rows:
        print(f"{row['term']:<8} {row['ms']:>21}")


if __name__ == "__main__":
    main()
