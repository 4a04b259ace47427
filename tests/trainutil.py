"""Helpers for the training tests: tiny prepared directories written with the real schema
(segops.core.records.encode_example + tf.io.TFRecordWriter), before/independently of `segops prepare`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from segops.core import records
from segops.core.imageio import encode_png
from segops.core.labels import NUM_CLASSES


def make_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable toy scene: horizontal bands of classes whose colour encodes the class,
    with noise, plus a rectangle of another class and an ignore strip."""
    label = np.zeros((height, width), np.uint8)
    sky, road = height // 3, 2 * height // 3
    label[:sky] = 10  # sky
    label[sky:road] = 2  # building
    label[road:] = 0  # road
    y, x = rng.integers(sky, road - 4), rng.integers(0, width - 8)
    label[y : y + max(height // 8, 2), x : x + max(width // 8, 4)] = 13  # car
    label[:, : max(width // 32, 1)] = 255  # ignore strip
    palette = np.zeros((256, 3), np.float32)
    palette[10], palette[2], palette[0], palette[13] = (70, 130, 180), (70, 70, 70), (128, 64, 128), (0, 0, 142)
    image = palette[label] + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_shards(
    out_dir: str,
    split: str,
    examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    num_shards: int = 2,
) -> list[str]:
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    import tensorflow as tf

    paths = [os.path.join(out_dir, split, f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord") for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    for i, (image, label, weight) in enumerate(examples):
        h, w = label.shape
        fields = records.ExampleFields(
            image_png=encode_png(image),
            label_png=encode_png(label),
            height=h,
            width=w,
            source=f"{split}/img{i}.png",
            city="toy",
            frame_id=f"toy_{i:06d}_000019",
            split=split,
            weight_map=weight,
        )
        writers[i % num_shards].write(records.encode_example(fields))
    for w in writers:
        w.close()
    return paths


def write_prepared(
    out_dir: str,
    counts: dict[str, int],
    height: int = 32,
    width: int = 64,
    seed: int = 0,
    weight_maps: bool = False,
    class_weights: bool = True,
    num_shards: int = 2,
) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]]:
    """A prepared directory like `segops prepare` writes (shards, manifest, stats, class weights)."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in counts.items():
        examples = []
        for _ in range(n):
            image, label = make_scene(rng, height, width)
            weight = rng.uniform(0.5, 3.0, label.shape).astype(np.float16).astype(np.float32) if weight_maps else None
            examples.append((image, label, weight))
        write_shards(out_dir, split, examples, num_shards)
        data[split] = examples
    manifest = {  # the keys segops train reads from workflows/prepare.py's manifest
        "schema_version": records.SCHEMA_VERSION,
        "options": {"weight_maps": weight_maps},
        "weight_maps": {"enabled": weight_maps},
        "splits": {split: {"records": n, "num_shards": num_shards} for split, n in counts.items()},
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    if class_weights:
        weights = {
            "source_split": "train",
            "default_scheme": "median_frequency",
            "schemes": {
                name: [float(v) for v in np.linspace(0.5, 2.0, NUM_CLASSES) * k]
                for k, name in enumerate(("median_frequency", "enet", "inverse_frequency"), start=1)
            },
            "class_names": [str(i) for i in range(NUM_CLASSES)],
        }
        with open(os.path.join(out_dir, "class_weights.json"), "w") as f:
            json.dump(weights, f)
    return data


def synth_val_and_tiny_unet(root, n_val: int, height: int, width: int, data_seed: int, model_seed: int):
    """``root/data``: ``n_val`` built-in val images; ``root/model``: an exported 2-level U-Net with
    random weights (its masks are varied, not trivial). Returns (model dir, data dir)."""
    import keras

    from segops.core.labels import NUM_CLASSES as CLASSES
    from segops.datasets.synth import generate_dataset
    from segops.models import build_model, export_dir

    generate_dataset(str(root / "data"), {"train": 0, "val": n_val, "test": 0}, height=height, width=width,
                     seed=data_seed)  # fmt: skip
    keras.utils.set_random_seed(model_seed)
    export_dir.export_model(build_model("unet", depth=2, base_filters=4), str(root / "model"),
                        export_dir.ModelInfo("unet", CLASSES, (height, width), 4))  # fmt: skip
    return root / "model", root / "data"


def synth_val_images(root, n_val: int, height: int, width: int, seed: int):
    """``root``: ``n_val`` built-in val images in the Cityscapes layout. Returns (root, the RGB
    images by path relative to leftImg8bit/val)."""
    import cv2

    from segops.datasets.synth import generate_dataset

    generate_dataset(str(root), {"train": 0, "val": n_val, "test": 0}, height=height, width=width, seed=seed)
    val = root / "leftImg8bit" / "val"
    return root, {str(p.relative_to(val)): cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(val.rglob("*.png"))}


def train_ids_mask(out, rel: str) -> np.ndarray:
    """The trainIds mask `segops infer` wrote into ``out`` for the image at ``rel``."""
    import cv2

    return cv2.imread(str(out / "masks" / rel.replace("_leftImg8bit.png", "_trainIds.png")), cv2.IMREAD_UNCHANGED)
