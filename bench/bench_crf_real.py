"""Dense-CRF parameters on real street scenes: dataset mIoU of one export on a labelled split,
without the CRF and with each CRF setting (run by hand; not a test).

    .venv/bin/python bench/bench_crf_real.py MODEL_DIR ../shared/datasets/camvid --split val \\
        [--tta none|flip] [--setting NAME:key=value,key=value ...]

The model runs once per image, exactly as ``segops infer`` runs it (``predict_probabilities``
with infer's default ``PredictOptions``); its probabilities are kept and every CRF setting is
applied to the same ones (``segops.inference.crf.refine``, the function infer calls). mIoU is
infer's dataset mIoU: IoU per class from the summed confusion matrix, averaged over the classes
in the ground truth or the prediction. Settings are ``CRFParams`` fields, e.g.
``small:bilateral_sxy=40,bilateral_compat=5``; ``default`` (infer's defaults) always runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segops.core import imageio, labels, metrics  # noqa: E402
from segops.inference import crf  # noqa: E402
from segops.inference.model import ServingModel  # noqa: E402
from segops.inference.options import PredictOptions  # noqa: E402
from segops.inference.tiling import predict_probabilities  # noqa: E402
from segops.models import export_dir  # noqa: E402


def parse_setting(text: str) -> tuple[str, crf.CRFParams]:
    name, _, fields = text.partition(":")
    types = {f.name: f.type for f in dataclasses.fields(crf.CRFParams)}
    values = {}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition("=")
        values[key] = int(value) if types[key] in ("int", int) else float(value)
    return name, crf.CRFParams(**values)


def settings_with_default(texts: list[str]) -> list[tuple[str, crf.CRFParams]]:
    """``default`` (infer's CRF defaults) first, then each ``NAME:key=value,...`` of ``texts``."""
    return [("default", crf.CRFParams())] + [parse_setting(text) for text in texts]


def pairs(root: str, split: str) -> list[tuple[str, str]]:
    images = sorted(glob.glob(os.path.join(root, "leftImg8bit", split, "*", "*_leftImg8bit.png")))
    out = []
    for path in images:
        rel = os.path.relpath(path, os.path.join(root, "leftImg8bit", split))
        label = os.path.join(root, "gtFine", split, rel.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
        out.append((path, label))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--tta", default="none")
    parser.add_argument("--setting", action="append", default=[])
    args = parser.parse_args()

    settings = settings_with_default(args.setting)
    stride = export_dir.load_info(args.model).stride
    model = ServingModel(args.model)
    options = PredictOptions(tta=args.tta)
    confusion = {name: np.zeros((labels.NUM_CLASSES,) * 2, np.int64) for name, _ in [("model", None), *settings]}
    seconds = dict.fromkeys(confusion, 0.0)
    labelled = pairs(args.root, args.split)
    for image_path, label_path in labelled:
        rgb = imageio.decode_rgb_image(Path(image_path).read_bytes())
        gt = labels.to_train_ids(imageio.decode_label_png(Path(label_path).read_bytes()))
        start = time.process_time()
        probs = predict_probabilities(model, [rgb], stride, options)[0]
        seconds["model"] += time.process_time() - start
        confusion["model"] += metrics.confusion_matrix(gt, probs.argmax(axis=2))
        for name, params in settings:
            start = time.process_time()
            refined = crf.refine(probs, rgb, params).labels
            seconds[name] += time.process_time() - start
            confusion[name] += metrics.confusion_matrix(gt, refined)
    n = len(labelled)
    print(f"{n} images of {args.root} {args.split}, model {args.model}, tta {args.tta}")
    print(f"{'setting':<12} {'mIoU':>7} {'CPU-s/img':>10}  per-class IoU (classes present)")
    for name, cm in confusion.items():
        iou = metrics.iou_per_class(cm)
        shown = " ".join(f"{labels.CLASS_NAMES[i][:6]}={v:.2f}" for i, v in enumerate(iou) if not np.isnan(v))
        print(f"{name:<12} {metrics.mean_iou(cm):7.4f} {seconds[name] / n:10.3f}  {shown}")
    for name, params in settings[1:]:
        print(f"{name}: {params}")


if __name__ == "__main__":
    main()
