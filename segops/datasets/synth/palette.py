"""Colours and textures of the synthetic scenes: the colour helpers every builder uses (jitter,
shade, pick), the fixed palettes of buildings, cars, clothes, skin and signs, the per-image class
palette, and the per-class texture strengths that :mod:`.render` adds when finishing an image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segops.core.labels import NAME_TO_LABEL

RGB = tuple[float, float, float]


def jitter(rng: np.random.Generator, color: Sequence[float], amount: float) -> RGB:
    c = np.asarray(color, np.float64) + rng.normal(0.0, amount, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def shade(color: RGB, factor: float) -> RGB:
    return tuple(float(min(255.0, c * factor)) for c in color)  # type: ignore[return-value]


def pick(rng: np.random.Generator, palette: Sequence[Sequence[float]], amount: float) -> RGB:
    return jitter(rng, palette[int(rng.integers(len(palette)))], amount)


BUILDING_PALETTE = ((150, 140, 125), (120, 120, 118), (150, 92, 72), (200, 194, 182), (95, 90, 86),
                    (170, 150, 110), (130, 135, 145))
CAR_PALETTE = ((225, 225, 228), (30, 30, 34), (160, 162, 168), (100, 100, 105), (150, 25, 30),
               (30, 50, 120), (20, 35, 60), (40, 80, 50), (190, 170, 140))
CLOTHES_PALETTE = ((30, 30, 40), (60, 60, 70), (120, 30, 40), (40, 60, 110), (200, 200, 195),
                   (90, 70, 50), (70, 90, 60), (150, 120, 90))
SKIN_PALETTE = ((225, 190, 160), (190, 140, 110), (120, 85, 60), (60, 45, 35))
SIGN_PALETTE = ((200, 30, 30), (30, 70, 170), (235, 235, 235), (240, 200, 20))


@dataclass
class Palette:
    """Per-image class colours: the same class looks different in each image."""

    sky: RGB
    road: RGB
    sidewalk: RGB
    vegetation: RGB
    terrain: RGB
    pole: RGB
    ground: RGB
    wall: RGB
    fence: RGB


def random_palette(rng: np.random.Generator) -> Palette:
    overcast = rng.random() < 0.5
    sky = jitter(rng, (205, 212, 220) if overcast else (115, 160, 215), 10)
    road = jitter(rng, (rng.uniform(70, 118),) * 3, 5)
    # sidewalks are lighter than the road, some pinkish (paving), some grey
    side = pick(rng, ((150, 140, 140), (140, 140, 140), (165, 150, 140), (125, 120, 125)), 8)
    return Palette(
        sky=sky,
        road=road,
        sidewalk=side,
        vegetation=pick(rng, ((55, 85, 35), (70, 95, 40), (45, 70, 40), (85, 100, 45)), 8),
        terrain=pick(rng, ((120, 150, 80), (140, 150, 95), (150, 135, 90), (105, 135, 75)), 8),
        pole=pick(rng, ((120, 120, 122), (90, 95, 100), (160, 160, 155)), 6),
        ground=pick(rng, ((120, 105, 90), (100, 95, 85), (135, 125, 110)), 6),
        wall=pick(rng, ((160, 155, 145), (130, 125, 120), (175, 165, 150), (110, 105, 100)), 8),
        fence=pick(rng, ((140, 130, 110), (95, 95, 100), (120, 95, 70)), 8),
    )


# --- textures -----------------------------------------------------------------------------------

# Per-labelId texture: (fine-grain noise std, mid-scale noise std), in 8-bit levels.
_TEXTURE = {
    "road": (5.0, 6.0), "sidewalk": (6.0, 5.0), "parking": (6.0, 5.0), "rail track": (8.0, 6.0),
    "building": (5.0, 9.0), "wall": (4.0, 5.0), "fence": (6.0, 5.0), "guard rail": (4.0, 3.0),
    "bridge": (5.0, 5.0), "pole": (3.0, 2.0), "traffic light": (3.0, 2.0), "traffic sign": (3.0, 2.0),
    "vegetation": (14.0, 22.0), "terrain": (9.0, 10.0), "sky": (1.0, 0.0), "person": (5.0, 6.0),
    "rider": (5.0, 6.0), "car": (3.0, 4.0), "truck": (3.0, 5.0), "bus": (3.0, 4.0), "train": (3.0, 4.0),
    "motorcycle": (5.0, 4.0), "bicycle": (6.0, 4.0), "static": (6.0, 6.0), "dynamic": (6.0, 6.0),
    "ground": (8.0, 8.0), "ego vehicle": (2.0, 3.0), "unlabeled": (4.0, 4.0),
}


def _texture_luts() -> tuple[np.ndarray, np.ndarray]:
    fine = np.full(256, 4.0, np.float32)
    mid = np.full(256, 4.0, np.float32)
    for name, (f, m) in _TEXTURE.items():
        fine[NAME_TO_LABEL[name].id] = f
        mid[NAME_TO_LABEL[name].id] = m
    return fine, mid


#: Per-labelId noise strengths (fine grain, mid scale), indexed by the class map of an image.
FINE_LUT, MID_LUT = _texture_luts()
