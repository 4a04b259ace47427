"""What comparing with the mask on disk costs the mask writer, per 1024x2048 frame: encoding the
three masks as before, against reading the existing trainIds PNG, decoding it, counting the 19x19
transitions and adding the text chunks (segops.inference.previous). Usage:
``python bench/bench_previous_mask.py [--repeats 20]``."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from segops.core import imageio
from segops.inference.masks import encode_masks
from segops.inference.previous import compare_with_existing, provenance_texts


def street_mask(rng: np.random.Generator, height: int = 1024, width: int = 2048) -> np.ndarray:
    """Flat regions (what masks are): a 32x64 grid of random classes, upsampled, plus noise."""
    coarse = rng.integers(0, 19, (height // 32, width // 32), dtype=np.uint8)
    mask = np.repeat(np.repeat(coarse, 32, axis=0), 32, axis=1)
    noise = rng.random(mask.shape) < 0.01
    mask[noise] = rng.integers(0, 19, int(noise.sum()), dtype=np.uint8)
    return mask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (1024, 2048, 3), dtype=np.uint8)
    old, new = street_mask(rng), street_mask(rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a_trainIds.png")
        with open(path, "wb") as f:
            f.write(imageio.with_png_text(imageio.encode_mask_png(old), provenance_texts("A", None)))
        plain, compared = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            encode_masks(rgb, new, False)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            with open(path, "rb") as f:
                previous = compare_with_existing(f.read(), new, "B")
            encode_masks(rgb, new, False, provenance_texts("B", previous))
            compared.append(time.perf_counter() - start)
    a, b = statistics.median(plain) * 1e3, statistics.median(compared) * 1e3
    print(f"encode the masks: {a:.1f} ms; read + compare + encode with provenance: {b:.1f} ms (+{b - a:.1f} ms)")


if __name__ == "__main__":
    main()
