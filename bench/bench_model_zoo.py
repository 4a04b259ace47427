"""Model-zoo table: for every model and encoder, parameters, forward GFLOPs at 1024x2048, CPU
forward frames/s, and val mIoU on the built-in dataset after the same training budget (run by
hand; not a test).

    .venv/bin/python bench/bench_model_zoo.py [--epochs 12] [--size 64x128] [--fps-size 256x512]
        [--train all|none|NAME,...] [--json out.json]

* GFLOPs: TensorFlow's graph profiler (``float_operation``: 2 per multiply-add) on the forward
  function traced at 1x1024x2048x3; conv, matmul and elementwise ops counted, resizes and
  gathers not.
* frames/s: ``model(x, training=False)`` on one ``--fps-size`` image, median of 5 calls after
  one warm-up, all cores TensorFlow wants.
* val mIoU: ``segops train`` (the library call) on a built-in dataset of 48 train / 12 val
  frames at ``--size``, the same flags for every model (``--epochs`` epochs of batch 8, Adam
  3e-3 poly, scale 0.75..1.5, random encoder weights: no downloads here), best val mIoU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

CONFIGS = [  # (model, backbone, hyper-parameters besides the backbone)
    ("unet", "none", {"depth": 4, "base_filters": 16}),
    ("fcn8s", "none", {"base_filters": 16}),
    ("segnet_basic", "none", {"depth": 4, "base_filters": 32}),
    ("segnet", "none", {"base_filters": 16}),
    ("deeplabv3plus", "none", {"base_filters": 16, "output_stride": 16}),
    ("deeplabv3plus", "none", {"base_filters": 16, "output_stride": 8}),
    ("segnet", "vgg16", {}),
    *((model, backbone, {"base_filters": 16})
      for backbone in ("vgg16", "resnet50", "mobilenetv2", "efficientnetb0") for model in ("unet", "fcn8s")),
    *(("deeplabv3plus", backbone, {"base_filters": 16, "output_stride": 16})
      for backbone in ("vgg16", "resnet50", "mobilenetv2", "efficientnetb0")),
]  # fmt: skip


def label(model: str, backbone: str, hp: dict) -> str:
    extra = f" OS{hp['output_stride']}" if "output_stride" in hp else ""
    return f"{model}{'' if backbone == 'none' else '+' + backbone}{extra}"


def gflops(model) -> float:
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec([1, 1024, 2048, 3], tf.float32)).graph
    opts = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation()).with_empty_output()
    return model_analyzer.profile(graph, options=opts.build()).total_float_ops / 1e9


def frames_per_second(model, hw: tuple[int, int]) -> float:
    import numpy as np

    x = np.random.default_rng(0).uniform(0, 255, (1, *hw, 3)).astype(np.float32)
    model(x, training=False)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model(x, training=False)
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def train_miou(model: str, backbone: str, hp: dict, prepared: str, out: str, hw: tuple[int, int], epochs: int):
    from segops.training.loop import train
    from segops.training.options import TrainOptions

    opts = TrainOptions.from_flat(prepared=prepared, out=out, model=model, backbone=backbone, epochs=epochs,
                                  batch_size=8, crop=hw, lr=3e-3, scale_range=(0.75, 1.5), verbose=0, **hp)  # fmt: skip
    start = time.perf_counter()
    result = train(opts)
    return result.best_val_mean_iou, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", default="64x128")
    parser.add_argument("--fps-size", default="256x512")
    parser.add_argument("--train", default="all", help="all, none, or comma-separated labels to train")
    parser.add_argument("--only", default="", help="comma-separated labels to measure (default: all)")
    parser.add_argument("--json")
    args = parser.parse_args()
    hw = tuple(int(v) for v in args.size.split("x"))
    fps_hw = tuple(int(v) for v in args.fps_size.split("x"))

    import keras

    from segops.datasets.synth import generate_dataset
    from segops.prepare.options import PrepareOptions
    from segops.training.options import ModelOptions
    from workflows.prepare import run_prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench_zoo_"))
    prepared = str(tmp / "prepared")
    if args.train != "none":
        generate_dataset(str(tmp / "raw"), {"train": 48, "val": 12}, height=hw[0], width=hw[1], seed=0)
        run_prepare(PrepareOptions(input=str(tmp / "raw"), output=prepared))
    rows = []
    print(f"{platform.machine()} {platform.processor() or ''}, {time.strftime('%Y-%m-%d')}; "
          f"train {args.epochs} epochs at {args.size}, fps at {args.fps_size}", flush=True)  # fmt: skip
    print("| model | params (M) | GFLOPs @1024x2048 | CPU frames/s @" + args.fps_size + " | val mIoU | train s |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    for model_name, backbone, hp in CONFIGS:
        name = label(model_name, backbone, hp)
        if args.only and name not in args.only.split(","):
            continue
        keras.backend.clear_session()
        net = ModelOptions(name=model_name, backbone=backbone, **hp).build()
        row = {"model": name, "params_m": net.count_params() / 1e6, "gflops": gflops(net),
               "fps": frames_per_second(net, fps_hw), "val_miou": None, "train_s": None}  # fmt: skip
        del net
        if args.train == "all" or name in args.train.split(","):
            miou, seconds = train_miou(model_name, backbone, hp, prepared, str(tmp / name.replace(" ", "_")), hw,
                                       args.epochs)  # fmt: skip
            row.update(val_miou=miou, train_s=seconds)
        rows.append(row)
        miou = "-" if row["val_miou"] is None else f"{row['val_miou']:.3f}"
        secs = "-" if row["train_s"] is None else f"{row['train_s']:.0f}"
        print(f"| {name} | {row['params_m']:.2f} | {row['gflops']:.0f} | {row['fps']:.2f} | {miou} | {secs} |",
              flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
