"""Check by hand that ``--backbone-weights imagenet`` for mobilenetv2 (torchvision's file from PyPI,
segops.models.imagenet_weights) is ImageNet's classifier: classify scikit-image's sample photos
(taken from its PyPI wheel, not installed) with the mapped Keras MobileNetV2 and its top.

    .venv/bin/python bench/check_imagenet_weights.py [--cache /tmp/segops-imagenet-check]

Exits 1 unless every photo's top-1 class is one of its expected ImageNet classes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np

# photo in skimage/data -> ImageNet-1k indices any of which is a right answer
EXPECTED = {
    "chelsea.png": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
    "coffee.png": {967: "espresso", 968: "cup"},
    "motorcycle_left.png": {665: "moped", 670: "motor scooter"},
}


def sample_photos(cache: Path) -> dict[str, np.ndarray]:
    """The photos of :data:`EXPECTED` as RGB arrays, from scikit-image's wheel (downloaded once)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("scikit_image-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", str(cache), "scikit-image"], check=True)  # fmt: skip
        wheels = sorted(cache.glob("scikit_image-*.whl"))
    photos = {}
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for name in EXPECTED:
            data = np.frombuffer(wheel.read(f"skimage/data/{name}"), np.uint8)
            photos[name] = cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]
    return photos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="/tmp/segops-imagenet-check", type=Path)
    args = parser.parse_args()
    import keras

    from segops.models.imagenet_weights import set_imagenet_mobilenetv2, torchvision_mobilenetv2_file

    print(f"weights: {torchvision_mobilenetv2_file()}")
    model = keras.applications.MobileNetV2(weights=None, include_top=True, input_shape=(224, 224, 3))
    set_imagenet_mobilenetv2(model)
    failures = 0
    for name, rgb in sample_photos(args.cache).items():
        image = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1
        probabilities = keras.ops.convert_to_numpy(model(image[None]))[0]
        top = np.argsort(probabilities)[::-1][:3]
        ok = int(top[0]) in EXPECTED[name]
        failures += not ok
        ranked = ", ".join(f"{i} ({probabilities[i]:.3f})" for i in top)
        print(f"{'ok  ' if ok else 'FAIL'} {name:22s} top-3 {ranked}; expected one of {EXPECTED[name]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
