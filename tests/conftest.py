"""Shared fixtures: tiny hand-made datasets in the Cityscapes layout (numpy + cv2.imwrite)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

# Before any test module imports TensorFlow: segops' process settings (oneDNN kernels on every
# x86-64 CPU; TensorFlow enables them by default only on CPUs with VNNI/AVX-512, so on an AMD
# EPYC without them a test module importing tensorflow first trained on Eigen at about half the
# speed). segops.core.runtime says why.
import segops  # noqa: F401


@dataclass
class Frame:
    """One frame's source arrays, as written to disk."""

    split: str
    city: str
    frame_id: str
    image: np.ndarray | None  # RGB uint8
    label: np.ndarray | None  # labelIds uint8
    instance: np.ndarray | None  # instanceIds uint16

    @property
    def image_rel(self) -> str:
        return f"leftImg8bit/{self.split}/{self.city}/{self.frame_id}_leftImg8bit.png"

    @property
    def label_rel(self) -> str:
        return f"gtFine/{self.split}/{self.city}/{self.frame_id}_gtFine_labelIds.png"

    @property
    def instance_rel(self) -> str:
        return f"gtFine/{self.split}/{self.city}/{self.frame_id}_gtFine_instanceIds.png"


def tiny_scene(seed: int, height: int = 32, width: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB image, labelIds, instanceIds) of a toy street: sky, building, road, cars, a person."""
    rng = np.random.default_rng(seed)
    label = np.full((height, width), 23, np.uint8)  # sky
    label[height // 4 : height // 2] = 11  # building
    label[height // 2 :] = 7  # road
    label[height // 2 :, : width // 8] = 8  # sidewalk
    label[: height // 8, : width // 8] = 1  # ego vehicle (void -> ignore)
    instance = label.astype(np.uint16)
    for k in range(int(rng.integers(2, 4))):  # cars, possibly touching
        r0 = int(rng.integers(height // 2, height - 6))
        c0 = int(rng.integers(width // 8, width - 12))
        h, w = int(rng.integers(3, 6)), int(rng.integers(6, 12))
        label[r0 : r0 + h, c0 : c0 + w] = 26
        instance[r0 : r0 + h, c0 : c0 + w] = 26000 + k
    label[2:8, width - 6 : width - 3] = 24  # one person
    instance[2:8, width - 6 : width - 3] = 24000
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image, label, instance


REPO = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """The environment of a segops subprocess: this checkout first on the import path."""
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: relative POSIX path -> bytes (to compare two outputs)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_png(path: Path) -> np.ndarray:
    """A PNG as stored (8/16-bit, channels as written by OpenCV)."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert arr is not None, path
    return arr


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), arr)


def write_frame(root: Path, frame: Frame) -> Frame:
    if frame.image is not None:
        write_png(root / frame.image_rel, frame.image)
    if frame.label is not None:
        write_png(root / frame.label_rel, frame.label)
    if frame.instance is not None:
        write_png(root / frame.instance_rel, frame.instance)
    return frame


def make_dataset(root: Path, counts: dict[str, int], height: int = 32, width: int = 64, seed: int = 0) -> list[Frame]:
    """A clean dataset: ``counts`` frames per split; the ``test`` split gets all-void labels."""
    frames = []
    for split, n in counts.items():
        for i in range(n):
            city = ("aachen", "bochum")[i % 2]
            image, label, instance = tiny_scene(seed * 1000 + len(frames), height, width)
            if split == "test":  # like real Cityscapes: labels exist but carry only void ids
                label = np.zeros_like(label)
                instance = np.zeros_like(instance)
            frame = Frame(split, city, f"{city}_{len(frames):06d}_000019", image, label, instance)
            frames.append(write_frame(root, frame))
    return frames


def brute_force_border(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """d1, d2 from the distances of every pixel to every pixel of every instance."""
    h, w = instances.shape
    pix = np.argwhere(np.ones((h, w), bool)).astype(np.float64)
    per_instance = []
    for k in np.unique(instances[instances > 0]):
        pts = np.argwhere(instances == k).astype(np.float64)
        d = np.sqrt(((pix[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).min(axis=1)
        per_instance.append(d)
    if len(per_instance) < 2:
        return np.zeros((h, w))
    d = np.sort(np.stack(per_instance, axis=1), axis=1)
    return (w0 * np.exp(-((d[:, 0] + d[:, 1]) ** 2) / (2 * sigma**2))).reshape(h, w)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, list[Frame]]:
    root = tmp_path / "raw"
    return root, make_dataset(root, {"train": 3, "val": 1, "test": 1})
