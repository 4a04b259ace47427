"""A published model as it comes, through `segops infer` (run by hand; not a test: it downloads).

    .venv/bin/python bench/check_published_segmenter.py [--images DIR] [--count 12] [--work /tmp/segops_published]

MediaPipe's selfie segmenter (``selfie_segmentation.tflite`` from the ``mediapipe==0.10.14``
wheel on PyPI: input 1x256x256x3 float in [0, 1], output 1x256x256x1 sigmoid probability, one
MediaPipe custom op, corner-aligned resizes in its own pipeline) with the card docs/models.md
gives for it, run by ``segops infer MODEL IMAGES OUT --no-crf``; its masks must equal, on every
pixel, the model's own prediction computed here directly with LiteRT's interpreter (the same
resize convention, threshold 0.5, person -> Cityscapes ``person``, background -> ignore). The
images default to real street frames: CamVid val (../shared/datasets/camvid), which has people.
Prints per image the share of person pixels and whether the masks are equal; exits 1 if any
differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "mediapipe==0.10.14"
MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
PERSON_TRAIN_ID, IGNORE = 11, 255
CARD = {
    "name": "mediapipe-selfie-segmentation", "classes": ["background", "person"], "label_set": "cityscapes",
    "class_map": {"person": "person"},
    "input": {"range": "0..1", "size": [256, 256], "resize": "align_corners"},
    "output": {"kind": "sigmoid"},
}  # fmt: skip


def fetch_model(work: Path) -> Path:
    model_dir = work / "model"
    target = model_dir / "selfie_segmentation.tflite"
    if target.exists():
        return target
    wheels = work / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(wheels)], check=True)
    (wheel,) = wheels.glob("mediapipe-*.whl")
    model_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def own_prediction(model: Path, rgb: np.ndarray) -> np.ndarray:
    """The model's mask computed directly: LiteRT, corner-aligned resizes, threshold 0.5."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    x = tf.compat.v1.image.resize_bilinear(rgb[None].astype(np.float32) / 255.0, (256, 256), align_corners=True)
    interpreter.set_tensor(inp["index"], x.numpy())
    interpreter.invoke()
    p = interpreter.get_tensor(out["index"])
    full = tf.compat.v1.image.resize_bilinear(p, rgb.shape[:2], align_corners=True).numpy()[0, ..., 0]
    return np.where(full > 0.5, PERSON_TRAIN_ID, IGNORE).astype(np.uint8)


def main() -> int:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared/datasets/camvid/leftImg8bit/val"))
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--work", default="/tmp/segops_published")
    args = parser.parse_args()
    work = Path(args.work)
    model = fetch_model(work)
    (model.parent / "card.json").write_text(json.dumps(CARD, indent=2))
    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    for path in sorted(Path(args.images).rglob("*.png"))[: args.count]:
        shutil.copy(path, images / path.name)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    segops = str(Path(sys.executable).with_name("segops"))
    run = subprocess.run([segops, "infer", str(model), str(images), str(out), "--no-crf"], capture_output=True, text=True)
    print(run.stdout[-2000:], run.stderr[-2000:] if run.returncode else "")
    if run.returncode:
        return 1
    differ = 0
    for path in sorted(images.glob("*.png")):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        stem = path.stem.removesuffix("_leftImg8bit")  # masks drop the Cityscapes image suffix
        mask = cv2.imread(str(out / "masks" / f"{stem}_trainIds.png"), cv2.IMREAD_UNCHANGED)
        expected = own_prediction(model, rgb)
        same = mask is not None and mask.shape == expected.shape and bool(np.array_equal(mask, expected))
        differ += not same
        wrong = "-" if mask is None or mask.shape != expected.shape else int((mask != expected).sum())
        print(f"{path.name}: person {float((expected == PERSON_TRAIN_ID).mean()):6.2%}  equal {same}  "
              f"pixels differing {wrong}")
    print(f"{len(list(images.glob('*.png'))) - differ} of {len(list(images.glob('*.png')))} masks equal the model's own")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
