"""The built-in procedural street-scene dataset, written in the exact Cityscapes layout.

Real Cityscapes needs a registration and an 11 GB download; this generator writes a small
dataset that every segops stage reads exactly as it reads the real one::

    OUT/leftImg8bit/<split>/<city>/<city>_<seq:06d>_000019_leftImg8bit.png     8-bit RGB
    OUT/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png      8-bit labelIds
    OUT/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_instanceIds.png   16-bit
    OUT/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_color.png         RGB colours
    OUT/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_polygons.json     polygons
    OUT/segops_synth.json                                                      what made it

Scenes are built in 3-D (a pinhole camera ~1.25 m above a street: road in perspective,
sidewalks, building façades with windows, trees, poles with signs and traffic lights, parked and
driving cars, trucks, buses, trams, persons, riders on bicycles and motorcycles, walls, fences,
void objects, the ego-vehicle hood) and projected to polygons. Each object is one polygon in
``*_gtFine_polygons.json`` (official schema: ``imgHeight``, ``imgWidth``, ``objects`` with
``label`` and ``polygon``), in painter's order, far to near. The labelIds PNG is the
rasterisation of exactly those polygons, in that order, with OpenCV's ``fillPoly`` (on a grid of
several sub-rows per pixel row sampled at pixel centres, which follows Pillow's pixel-centre rule
instead of OpenCV's "every pixel the outline touches"): cityscapesScripts' ``json2labelImg``
reproduces >= 99.8 % of the pixels at 64x128 and ~99.99 % at 1024x2048. instanceIds follow the
Cityscapes encoding: ``labelId * 1000 + k`` (k counts from 0 per class and image) for classes
with instances, the plain labelId elsewhere. The colour PNG is ``LABEL_ID_TO_COLOR[labelIds]``.

The image is painted from the same polygons (its edges match the label edges to within a
pixel), then made harder:
per-image palettes, per-object colours, windows/wheels/markings that are not separate labels,
per-class texture noise, low-frequency shading, a sky gradient, blur, sensor noise and
occlusion. Similar classes (road/sidewalk, building/wall, vegetation/terrain, person/rider) are
separable only partly. Pixel frequencies are imbalanced as in real streets: road, building and
vegetation large; poles, signs and traffic lights small; rider, truck, bus, train and
motorcycle rare. Every labelled image is guaranteed two of the ten rarest classes (chosen by its
index, placed where nothing occludes them), so any train split of 5 or more images contains
them all; the nine common classes appear in nearly every image. All 19 evaluation classes are
therefore present and class weights are finite.

The ``test`` split mimics the real Cityscapes test set: images are present and so are the gtFine
files, but they carry no usable labels: only void ids (0 unlabeled, 1 ego vehicle,
2 rectification border, 3 out of roi), i.e. nothing a metric could be computed on.

Determinism: each image's random generator is seeded from ``(seed, split, index)`` only, so an
image does not depend on the counts of its own or other splits, and a rerun with the same
options writes byte-identical files. Files are written atomically (temporary name, then rename),
so an interrupted run leaves no half-written file. Files from an earlier run with larger counts
are not deleted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from segops import __version__
from segops.core.fs import dump_json, write_bytes_atomic
from segops.core.imageio import encode_mask_png, encode_png
from segops.core.labels import LABEL_ID_TO_COLOR, NAME_TO_LABEL

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Real Cityscapes city names, different per split as in the real dataset.
CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum", "bremen"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld"),
}
#: Demo-sized defaults. 48 train images at 256x512 are ~6.3 M labelled pixels, enough for a small
#: U-Net to start separating the large classes in a few CPU epochs, and each of the 10 rarest
#: classes is guaranteed in ~10 of them. 12 val images (4 per city) give a usable
#: confusion-matrix mIoU; 6 test images exercise unlabeled inference. Generating all 66 takes
#: ~4 s on one core, and the demo's cost stays in training, not in data.
DEFAULT_COUNTS: dict[str, int] = {"train": 48, "val": 12, "test": 6}
FRAME = 19  # gtFine annotates the 20th frame of each 30-frame snippet: always *_000019_*
MANIFEST_NAME = "segops_synth.json"
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
#: The only labels the test split's gtFine files carry (as in the real test set).
TEST_VOID_LABELS = frozenset({"ego vehicle", "rectification border", "out of roi"})
#: Classes guaranteed by image index (two per labelled image), rarest first.
GUARANTEED = ("rider", "truck", "bus", "train", "motorcycle", "bicycle", "wall", "fence", "terrain",
              "traffic light")

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


_FINE_LUT, _MID_LUT = _texture_luts()
_SKY_ID = NAME_TO_LABEL["sky"].id
# Label rasterisation: sub-rows per pixel row (see render); fewer above Cityscapes' size, where
# boundary pixels are a smaller share and the sub-row canvases would take hundreds of MB.
_ROWS, _ROWS_LARGE, _LARGE = 9, 3, 1024 * 2048

# --- scene description -------------------------------------------------------------------------

RGB = tuple[float, float, float]


@dataclass
class Item:
    """One drawing operation. ``label`` set: an annotated object (JSON, labelIds, instanceIds and
    image). ``label`` None: paint only (windows, wheels, markings, shadows)."""

    points: np.ndarray  # (N, 2) float pixel coordinates
    color: RGB
    label: str | None = None
    line: int = 0  # > 0: paint an open polyline of this thickness instead of a filled polygon


@dataclass
class _Camera:
    height: int
    width: int
    focal: float  # pixels
    cam_h: float  # metres above the ground
    cx: float
    horizon: float

    def project(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """World (X right, Y up from the ground, Z forward; metres) -> (N, 2) pixels."""
        z = np.maximum(np.asarray(z, np.float64), 0.5)
        u = self.cx + self.focal * np.asarray(x, np.float64) / z
        v = self.horizon + self.focal * (self.cam_h - np.asarray(y, np.float64)) / z
        return np.stack(np.broadcast_arrays(u, v), axis=-1).reshape(-1, 2)

    def scale(self, z: float) -> float:
        """Pixels per metre at depth z."""
        return self.focal / max(z, 0.5)


def _jitter(rng: np.random.Generator, color: Sequence[float], amount: float) -> RGB:
    c = np.asarray(color, np.float64) + rng.normal(0.0, amount, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _shade(color: RGB, factor: float) -> RGB:
    return tuple(float(min(255.0, c * factor)) for c in color)  # type: ignore[return-value]


def _pick(rng: np.random.Generator, palette: Sequence[Sequence[float]], amount: float) -> RGB:
    return _jitter(rng, palette[int(rng.integers(len(palette)))], amount)


_BUILDING_PALETTE = ((150, 140, 125), (120, 120, 118), (150, 92, 72), (200, 194, 182), (95, 90, 86),
                     (170, 150, 110), (130, 135, 145))
_CAR_PALETTE = ((225, 225, 228), (30, 30, 34), (160, 162, 168), (100, 100, 105), (150, 25, 30),
                (30, 50, 120), (20, 35, 60), (40, 80, 50), (190, 170, 140))
_CLOTHES_PALETTE = ((30, 30, 40), (60, 60, 70), (120, 30, 40), (40, 60, 110), (200, 200, 195),
                    (90, 70, 50), (70, 90, 60), (150, 120, 90))
_SKIN_PALETTE = ((225, 190, 160), (190, 140, 110), (120, 85, 60), (60, 45, 35))
_SIGN_PALETTE = ((200, 30, 30), (30, 70, 170), (235, 235, 235), (240, 200, 20))


@dataclass
class _Palette:
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


def _palette(rng: np.random.Generator) -> _Palette:
    overcast = rng.random() < 0.5
    sky = _jitter(rng, (205, 212, 220) if overcast else (115, 160, 215), 10)
    road = _jitter(rng, (rng.uniform(70, 118),) * 3, 5)
    # sidewalks are lighter than the road, some pinkish (paving), some grey
    side = _pick(rng, ((150, 140, 140), (140, 140, 140), (165, 150, 140), (125, 120, 125)), 8)
    return _Palette(
        sky=sky,
        road=road,
        sidewalk=side,
        vegetation=_pick(rng, ((55, 85, 35), (70, 95, 40), (45, 70, 40), (85, 100, 45)), 8),
        terrain=_pick(rng, ((120, 150, 80), (140, 150, 95), (150, 135, 90), (105, 135, 75)), 8),
        pole=_pick(rng, ((120, 120, 122), (90, 95, 100), (160, 160, 155)), 6),
        ground=_pick(rng, ((120, 105, 90), (100, 95, 85), (135, 125, 110)), 6),
        wall=_pick(rng, ((160, 155, 145), (130, 125, 120), (175, 165, 150), (110, 105, 100)), 8),
        fence=_pick(rng, ((140, 130, 110), (95, 95, 100), (120, 95, 70)), 8),
    )


@dataclass
class _Street:
    """Lateral layout of the street, in metres (left side negative X)."""

    road_left: float
    road_right: float
    sidewalk: dict[int, tuple[float, float]]  # side -> (inner X, outer X) as magnitudes
    building_x: dict[int, float]  # side -> |X| of the façade line
    park: dict[int, bool]  # side -> no buildings, trees and terrain instead
    far_z: float  # where the street ends (skyline)


@dataclass
class _Scene:
    rng: np.random.Generator
    cam: _Camera
    pal: _Palette
    guaranteed: frozenset[str]
    background: list[Item] = field(default_factory=list)  # drawn first, in order
    objects: list[tuple[float, list[Item]]] = field(default_factory=list)  # (depth, items), far first
    forced: list[tuple[float, list[Item]]] = field(default_factory=list)  # guaranteed rare objects
    foreground: list[Item] = field(default_factory=list)  # ego vehicle, borders

    # helpers producing items ------------------------------------------------------------------

    def poly(self, label: str | None, xs, ys, zs, color: RGB) -> Item:
        return Item(self.cam.project(xs, ys, zs), color, label)

    def xplane_quad(self, label: str | None, x: float, z0: float, z1: float, y0: float, y1: float,
                    color: RGB) -> Item:
        """A rectangle in the plane X = x (façades, walls, fences along the street)."""
        return self.poly(label, [x, x, x, x], [y0, y1, y1, y0], [z0, z0, z1, z1], color)

    def zplane_rect(self, label: str | None, x0: float, x1: float, y0: float, y1: float, z: float,
                    color: RGB) -> Item:
        """A rectangle facing the camera at depth z."""
        return self.poly(label, [x0, x0, x1, x1], [y0, y1, y1, y0], [z, z, z, z], color)

    def ground_band(self, label: str | None, x0: float, x1: float, z0: float, z1: float, color: RGB) -> Item:
        return self.poly(label, [x0, x1, x1, x0], [0, 0, 0, 0], [z0, z0, z1, z1], color)


# --- scene generation ---------------------------------------------------------------------------


def _camera(rng: np.random.Generator, height: int, width: int) -> _Camera:
    return _Camera(
        height=height,
        width=width,
        focal=width * rng.uniform(1.0, 1.2),
        cam_h=rng.uniform(1.15, 1.4),
        cx=width * rng.uniform(0.42, 0.58),
        horizon=height * rng.uniform(0.36, 0.46),
    )


def _street(rng: np.random.Generator, guaranteed: frozenset[str]) -> _Street:
    road_left = rng.uniform(3.0, 8.0)
    road_right = rng.uniform(2.0, 5.0)
    sidewalk: dict[int, tuple[float, float]] = {}
    building_x: dict[int, float] = {}
    park: dict[int, bool] = {}
    for side, road in ((-1, road_left), (1, road_right)):
        inner = road + (rng.uniform(1.0, 2.5) if rng.random() < 0.3 or "terrain" in guaranteed else 0.0)
        outer = inner + rng.uniform(2.5, 6.0)
        sidewalk[side] = (inner, outer)
        park[side] = rng.random() < 0.12
        building_x[side] = outer + (rng.uniform(1.0, 4.0) if rng.random() < 0.25 else 0.0)
    return _Street(road_left, road_right, sidewalk, building_x, park, far_z=rng.uniform(90, 260))


def _background(sc: _Scene, st: _Street) -> None:
    """Sky, ground bands, skyline and façades: everything behind the street furniture."""
    rng, cam, pal = sc.rng, sc.cam, sc.pal
    add = sc.background.append
    h, w = cam.height, cam.width
    add(Item(np.array([[0, 0], [w - 1, 0], [w - 1, cam.horizon + 3], [0, cam.horizon + 3]], float),
             pal.sky, "sky"))
    z_near, z_far = 2.0, 600.0
    road_c = pal.road
    for side in (-1, 1):
        inner, outer = st.sidewalk[side]
        road = st.road_left if side < 0 else st.road_right
        outer_label = "terrain" if st.park[side] else "sidewalk"
        outer_color = pal.terrain if st.park[side] else pal.sidewalk
        add(sc.ground_band(outer_label, side * 200.0, side * outer, z_near, z_far, outer_color))
        add(sc.ground_band("sidewalk", side * outer, side * inner, z_near, z_far, pal.sidewalk))
        # paving joints: lines along the sidewalk
        for k in range(1, 3):
            xk = side * (inner + (outer - inner) * k / 3)
            add(Item(cam.project([xk, xk], [0, 0], [z_near, z_far]), _shade(pal.sidewalk, 0.85), line=1))
        if st.building_x[side] > outer and not st.park[side]:
            label = "terrain" if rng.random() < 0.6 else "ground"
            color = pal.terrain if label == "terrain" else pal.ground
            add(sc.ground_band(label, side * st.building_x[side], side * outer, z_near, z_far, color))
        if inner > road:
            add(sc.ground_band("terrain", side * inner, side * road, z_near, z_far, pal.terrain))
        # curb stones
        add(Item(cam.project([side * road] * 2, [0, 0], [z_near, z_far]), _shade(pal.sidewalk, 1.15),
                 line=max(1, round(h / 256))))
    add(sc.ground_band("road", -st.road_left, st.road_right, z_near, z_far, road_c))
    _road_markings(sc, st)
    if rng.random() < 0.18:  # parking lane along the right curb
        add(sc.ground_band("parking", st.road_right - 2.2, st.road_right, z_near, z_far,
                           _jitter(rng, road_c, 10)))
    if rng.random() < 0.25:  # a patch of void ground (gravel, a driveway)
        z0 = rng.uniform(8, 30)
        side = int(rng.choice([-1, 1]))
        inner, outer = st.sidewalk[side]
        add(sc.ground_band("ground", side * outer, side * inner, z0, z0 + rng.uniform(3, 10), pal.ground))
    _skyline(sc, st)
    for side in (-1, 1):
        if st.park[side]:
            _park(sc, st, side)
        else:
            _facades(sc, st, side)


def _road_markings(sc: _Scene, st: _Street) -> None:
    rng = sc.rng
    white = _jitter(rng, (215, 215, 210), 8)
    lane_x = [0.0 - rng.uniform(1.4, 2.0)] if st.road_left > 3.5 else []
    if rng.random() < 0.5:
        lane_x.append(st.road_right - 0.4)
    for x in lane_x:
        z, dash, gap = rng.uniform(3, 6), rng.uniform(2.5, 4), rng.uniform(4, 8)
        while z < 120:
            sc.background.append(sc.ground_band(None, x - 0.07, x + 0.07, z, z + dash, white))
            z += dash + gap
    if rng.random() < 0.3:  # zebra crossing
        z0 = rng.uniform(10, 25)
        x = -st.road_left
        while x < st.road_right:
            sc.background.append(sc.ground_band(None, x, x + 0.5, z0, z0 + 3.0, white))
            x += 1.0


def _skyline(sc: _Scene, st: _Street) -> None:
    """Buildings (and some trees) across the end of the street."""
    rng = sc.rng
    z = st.far_z
    x = -rng.uniform(60, 90)
    while x < 80:
        width = rng.uniform(8, 25)
        if rng.random() < 0.2:
            c = _jitter(rng, sc.pal.vegetation, 8)
            sc.background.append(_canopy(sc, x + width / 2, rng.uniform(4, 9), width / 2, rng.uniform(3, 6), z, c))
        elif rng.random() < 0.85:
            color = _pick(rng, _BUILDING_PALETTE, 15)
            sc.background.append(sc.zplane_rect("building", x, x + width, 0, rng.uniform(6, 35), z, color))
        x += width


def _facades(sc: _Scene, st: _Street, side: int) -> None:
    rng, cam = sc.rng, sc.cam
    xb = side * st.building_x[side]
    z = 3.0
    while z < st.far_z:
        length = rng.uniform(8, 28)
        z1 = min(z + length, st.far_z)
        if rng.random() < 0.08 and z > 15:  # a gap: a tree behind, sky above
            c = _jitter(rng, sc.pal.vegetation, 8)
            sc.background.append(_canopy(sc, xb + side * 3, rng.uniform(4, 8), 3.0, rng.uniform(3, 5), (z + z1) / 2, c))
            z = z1
            continue
        height = rng.uniform(7, 26)
        color = _pick(rng, _BUILDING_PALETTE, 18)
        sc.background.append(sc.xplane_quad("building", xb, z, z1, 0, height, _shade(color, 0.92 if side < 0 else 1.0)))
        # windows on a floor grid, equally spaced in depth (so foreshortened on screen)
        if cam.scale(z) * 1.0 >= 1.5:  # windows at least ~1.5 px tall
            glass = _jitter(rng, (60, 70, 85) if rng.random() < 0.7 else (150, 160, 170), 10)
            frame = rng.uniform(0.6, 1.3)
            ww, wh = rng.uniform(0.9, 1.5), rng.uniform(1.2, 1.7)
            spacing = rng.uniform(2.6, 3.6)
            floor_h = rng.uniform(2.9, 3.5)
            y = rng.uniform(3.0, 4.0)
            while y + wh < height - 0.5:
                zz = z + frame
                while zz + ww < z1 - 0.5:
                    lit = _shade(glass, rng.uniform(0.8, 1.25))
                    sc.background.append(sc.xplane_quad(None, xb, zz, zz + ww, y, y + wh, lit))
                    zz += spacing
                y += floor_h
            # ground floor: shop windows or doors
            if rng.random() < 0.5:
                sc.background.append(sc.xplane_quad(None, xb, z + 1, z1 - 1, 0.4, 2.6, _shade(glass, 0.8)))
        z = z1
    _along_facade(sc, st, side)


def _along_facade(sc: _Scene, st: _Street, side: int) -> None:
    """Hedges, walls and fences along the building line."""
    rng = sc.rng
    x = side * (st.building_x[side] - 0.3)
    z = rng.uniform(4, 12)
    while z < min(st.far_z, 120):
        length = rng.uniform(5, 20)
        r = rng.random()
        if r < 0.12:
            h = rng.uniform(0.8, 2.4)
            sc.background.append(sc.xplane_quad("wall", x, z, z + length, 0, h, _jitter(rng, sc.pal.wall, 6)))
        elif r < 0.22:
            sc.background.extend(_fence(sc, x, z, z + length, rng.uniform(1.0, 2.0)))
        elif r < 0.32:
            h = rng.uniform(0.7, 1.6)
            sc.background.append(sc.xplane_quad("vegetation", x, z, z + length, 0, h,
                                                _jitter(rng, sc.pal.vegetation, 8)))
        z += length + rng.uniform(5, 25)


def _fence(sc: _Scene, x: float, z0: float, z1: float, h: float) -> list[Item]:
    """A fence along the street (plane X = x): posts and rails painted over a darker fill."""
    rng = sc.rng
    color = _jitter(rng, sc.pal.fence, 8)
    items = [sc.xplane_quad("fence", x, z0, z1, 0, h, _shade(color, 0.75))]
    post = _shade(color, 1.25)
    zz = z0
    while zz <= z1:
        items.append(Item(sc.cam.project([x, x], [0, h], [zz, zz]), post, line=1))
        zz += rng.uniform(1.5, 2.5)
    for y in (h * 0.15, h * 0.9):
        items.append(Item(sc.cam.project([x, x], [y, y], [z0, z1]), post, line=1))
    return items


def _cross_fence(sc: _Scene, x0: float, x1: float, z: float, h: float) -> list[Item]:
    """A fence facing the camera (building site, yard boundary)."""
    rng = sc.rng
    color = _jitter(rng, sc.pal.fence, 8)
    items = [sc.zplane_rect("fence", x0, x1, 0, h, z, _shade(color, 0.75))]
    post = _shade(color, 1.25)
    n = max(2, int(abs(x1 - x0) / 0.4))
    for xx in np.linspace(x0, x1, n):
        items.append(Item(sc.cam.project([xx, xx], [0, h], [z, z]), post, line=1))
    items.append(Item(sc.cam.project([x0, x1], [h * 0.9] * 2, [z, z]), post, line=1))
    return items


def _park(sc: _Scene, st: _Street, side: int) -> None:
    rng = sc.rng
    z = rng.uniform(5, 15)
    while z < st.far_z:
        x = side * rng.uniform(st.sidewalk[side][1] + 2, st.sidewalk[side][1] + 25)
        _tree(sc, x, z)
        z += rng.uniform(4, 12)
    if rng.random() < 0.5:
        x = side * (st.sidewalk[side][1] + 0.3)
        sc.background.extend(_fence(sc, x, rng.uniform(5, 10), rng.uniform(30, 60), rng.uniform(1.0, 1.8)))


def _canopy(sc: _Scene, x: float, y: float, rx: float, ry: float, z: float, color: RGB) -> Item:
    """A jagged ellipse of leaves in the plane facing the camera."""
    n = 18
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 + sc.rng.uniform(-0.18, 0.18, n)
    return sc.poly("vegetation", x + rx * r * np.cos(ang), y + ry * r * np.sin(ang), np.full(n, z), color)


def _tree(sc: _Scene, x: float, z: float) -> None:
    rng = sc.rng
    height = rng.uniform(4, 11)
    trunk_w = rng.uniform(0.2, 0.4)
    items = [sc.zplane_rect("vegetation", x - trunk_w / 2, x + trunk_w / 2, 0, height * 0.6, z,
                            _jitter(rng, (80, 65, 50), 10))]
    rx = rng.uniform(1.5, 3.5)
    items.append(_canopy(sc, x, height - rx * 0.8, rx, rx * rng.uniform(0.8, 1.2), z,
                         _jitter(rng, sc.pal.vegetation, 10)))
    sc.objects.append((z, items))


# --- street furniture and traffic ---------------------------------------------------------------


def _pole(sc: _Scene, x: float, z: float, kind: str) -> list[Item]:
    """A pole; kind: plain, sign, light (traffic light), lamp (street light)."""
    rng, pal = sc.rng, sc.pal
    height = rng.uniform(3.0, 4.0) if kind == "sign" else rng.uniform(4.0, 8.0)
    w = rng.uniform(0.12, 0.25) / 2
    # keep a pole at least ~1 px wide at any depth
    w = max(w, 0.5 / sc.cam.scale(z))
    items = [sc.zplane_rect("pole", x - w, x + w, 0, height, z, _jitter(rng, pal.pole, 5))]
    if kind == "sign":
        items += _sign(sc, x, height - rng.uniform(0.3, 0.6), z)
        if rng.random() < 0.3:
            items += _sign(sc, x, height - 1.2, z)
    elif kind == "light":
        items += _traffic_light(sc, x, height - rng.uniform(0.2, 1.5), z)
        if rng.random() < 0.5:  # a mast arm over the road with a second light hanging from it
            reach = -np.sign(x) * rng.uniform(2.5, 5.0)
            items.append(sc.zplane_rect("pole", min(x, x + reach), max(x, x + reach), height - 0.2, height, z,
                                        _jitter(rng, pal.pole, 5)))
            items += _traffic_light(sc, x + reach, height - 0.2, z)
    elif kind == "lamp":
        reach = -np.sign(x) * rng.uniform(1.0, 3.0)
        items.append(sc.zplane_rect("pole", min(x, x + reach), max(x, x + reach), height - 0.15, height, z,
                                    _jitter(rng, pal.pole, 5)))
        items.append(sc.zplane_rect("pole", x + reach - 0.3, x + reach + 0.3, height - 0.35, height, z,
                                    _shade(pal.pole, 1.2)))
    return items


def _sign(sc: _Scene, x: float, y: float, z: float) -> list[Item]:
    rng = sc.rng
    size = rng.uniform(0.6, 0.9)
    shape = int(rng.integers(4))
    n = {0: 12, 1: 3, 2: 4, 3: 4}[shape]
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + {0: 0, 1: np.pi / 2, 2: np.pi / 4, 3: 0}[shape]
    xs, ys = x + size / 2 * np.cos(ang), y + size / 2 * np.sin(ang)
    face = _pick(rng, _SIGN_PALETTE, 12)
    items = [sc.poly("traffic sign", xs, ys, np.full(n, z), face)]
    inner = (235, 235, 235) if face[0] < 200 or face[2] > 150 else (40, 40, 40)
    items.append(sc.poly(None, x + size / 3.2 * np.cos(ang), y + size / 3.2 * np.sin(ang), np.full(n, z),
                         _jitter(rng, inner, 10)))
    return items


def _traffic_light(sc: _Scene, x: float, y: float, z: float) -> list[Item]:
    rng = sc.rng
    w, h = rng.uniform(0.35, 0.45), rng.uniform(0.9, 1.1)
    items = [sc.zplane_rect("traffic light", x - w / 2, x + w / 2, y - h, y, z, _jitter(rng, (35, 35, 30), 6))]
    lit = int(rng.integers(3))
    for k, c in enumerate(((230, 40, 30), (240, 180, 20), (40, 220, 90))):
        color = c if k == lit else (60, 60, 55)
        cy = y - h * (k + 0.5) / 3
        items.append(sc.zplane_rect(None, x - w * 0.3, x + w * 0.3, cy - h * 0.11, cy + h * 0.11, z, color))
    return items


def _box_items(sc: _Scene, label: str, x0: float, x1: float, z0: float, z1: float,
               boxes: Sequence[tuple[float, float, float, float, float, float]], color: RGB,
               glass: RGB | None) -> list[Item]:
    """A vehicle made of axis-aligned boxes (x0, x1, y0, y1, z0, z1); the label polygon is the
    convex hull of their projections down to the ground."""
    cam = sc.cam
    pts = []
    for bx0, bx1, by0, by1, bz0, bz1 in boxes:
        xs, ys, zs = np.meshgrid([bx0, bx1], [by0, by1], [bz0, bz1], indexing="ij")
        pts.append(cam.project(xs.ravel(), ys.ravel(), zs.ravel()))
    # wheels touch the ground below the lowest box
    pts.append(cam.project([x0, x1, x0, x1], [0, 0, 0, 0], [z0 + 0.6, z0 + 0.6, z1 - 0.6, z1 - 0.6]))
    hull = cv2.convexHull(np.concatenate(pts).astype(np.float32))[:, 0, :].astype(np.float64)
    items = [Item(hull, _shade(color, 0.75), label)]
    # the visible faces, far to near: side faces, then top, then the face towards the camera
    for bx0, bx1, by0, by1, bz0, bz1 in boxes:
        if bx1 < 0:
            items.append(sc.xplane_quad(None, bx1, bz0, bz1, by0, by1, _shade(color, 0.85)))
        elif bx0 > 0:
            items.append(sc.xplane_quad(None, bx0, bz0, bz1, by0, by1, _shade(color, 0.8)))
        if by1 < cam.cam_h:
            items.append(sc.poly(None, [bx0, bx1, bx1, bx0], [by1] * 4, [bz0, bz0, bz1, bz1], _shade(color, 1.1)))
        items.append(sc.zplane_rect(None, bx0, bx1, by0, by1, bz0, color))
    # wheels on the visible side
    wheel_x = x1 if x1 < 0 else x0 if x0 > 0 else None
    for wz in (z0 + 0.8, z1 - 0.8):
        if wheel_x is not None:
            items.append(sc.xplane_quad(None, wheel_x, wz - 0.33, wz + 0.33, 0, 0.62, (25, 25, 25)))
    items.append(sc.zplane_rect(None, x0 + 0.15, x0 + 0.5, 0, 0.4, z0, (20, 20, 20)))
    items.append(sc.zplane_rect(None, x1 - 0.5, x1 - 0.15, 0, 0.4, z0, (20, 20, 20)))
    if glass is not None:
        items.extend(_glass(sc, boxes[-1], glass))
    return items


def _glass(sc: _Scene, box: tuple[float, float, float, float, float, float], glass: RGB) -> list[Item]:
    bx0, bx1, by0, by1, bz0, bz1 = box
    m = 0.12
    gy0, gy1 = by0 + (by1 - by0) * 0.15, by1 - m
    items = [sc.zplane_rect(None, bx0 + m, bx1 - m, gy0, gy1, bz0, glass)]
    if bx1 < 0:
        items.append(sc.xplane_quad(None, bx1, bz0 + m, bz1 - m, gy0, gy1, _shade(glass, 0.9)))
    elif bx0 > 0:
        items.append(sc.xplane_quad(None, bx0, bz0 + m, bz1 - m, gy0, gy1, _shade(glass, 0.9)))
    return items


def _shadow(sc: _Scene, x0: float, x1: float, z0: float, z1: float) -> Item:
    return sc.ground_band(None, x0 - 0.15, x1 + 0.15, z0 - 0.2, z1 + 0.2, _shade(sc.pal.road, 0.45))


def _car(sc: _Scene, x: float, z: float) -> list[Item]:
    rng = sc.rng
    w, length = rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.9)
    body_h, roof = rng.uniform(0.85, 1.05), rng.uniform(1.35, 1.6)
    color = _pick(rng, _CAR_PALETTE, 12)
    x0, x1 = x - w / 2, x + w / 2
    cab_len = length * rng.uniform(0.45, 0.6)
    cz0 = z + length * rng.uniform(0.18, 0.3)
    boxes = [(x0, x1, 0.22, body_h, z, z + length),
             (x0 + 0.12, x1 - 0.12, body_h, roof, cz0, cz0 + cab_len)]
    items = [_shadow(sc, x0, x1, z, z + length)]
    items += _box_items(sc, "car", x0, x1, z, z + length, boxes, color, _jitter(rng, (40, 45, 55), 8))
    # tail lights
    for lx in (x0 + 0.1, x1 - 0.4):
        items.append(sc.zplane_rect(None, lx, lx + 0.3, body_h - 0.3, body_h - 0.12, z, (190, 30, 25)))
    return items


def _truck(sc: _Scene, x: float, z: float, facing: bool) -> list[Item]:
    rng = sc.rng
    w = rng.uniform(2.3, 2.55)
    cargo_len, cab_len = rng.uniform(5, 9), 2.2
    cargo_h, cab_h = rng.uniform(3.0, 3.8), rng.uniform(2.6, 3.0)
    x0, x1 = x - w / 2, x + w / 2
    cab = (x0, x1, 0.5, cab_h, z, z + cab_len) if facing else (x0, x1, 0.5, cab_h, z + cargo_len, z + cargo_len + cab_len)
    cargo = (x0, x1, 0.7, cargo_h, z + cab_len + 0.2, z + cab_len + 0.2 + cargo_len) if facing else (
        x0, x1, 0.7, cargo_h, z, z + cargo_len)
    color = _pick(rng, ((230, 230, 230), (180, 40, 35), (40, 70, 140), (200, 180, 60), (90, 95, 100)), 10)
    boxes = [cargo, cab] if facing else [cab, cargo]
    z1 = z + cargo_len + cab_len + 0.2
    items = [_shadow(sc, x0, x1, z, z1)]
    items += _box_items(sc, "truck", x0, x1, z, z1, boxes, color,
                        _jitter(rng, (45, 50, 60), 8) if facing else None)
    return items


def _bus(sc: _Scene, x: float, z: float, label: str = "bus") -> list[Item]:
    rng = sc.rng
    w = rng.uniform(2.4, 2.55)
    length = rng.uniform(10, 14) if label == "bus" else rng.uniform(20, 30)
    h = rng.uniform(2.9, 3.3)
    palette = ((230, 200, 40), (235, 235, 230), (190, 40, 40), (40, 80, 150)) if label == "bus" else (
        (200, 30, 35), (235, 235, 230), (30, 90, 160))
    color = _pick(rng, palette, 8)
    x0, x1 = x - w / 2, x + w / 2
    box = (x0, x1, 0.35, h, z, z + length)
    items = [_shadow(sc, x0, x1, z, z + length)]
    items += _box_items(sc, label, x0, x1, z, z + length, [box], color, None)
    glass = _jitter(rng, (40, 45, 55), 6)
    band = (x0, x1, h * 0.4, h * 0.85, z, z + length)
    items += _glass(sc, band, glass)
    return items


def _person_outline(stance: float) -> np.ndarray:
    """Standing-person silhouette, height 1, feet at y=0, centred on x=0 (y up)."""
    s = stance
    body = [(0.035, 0.86), (0.12, 0.82), (0.14, 0.55), (0.105, 0.52), (0.09, 0.50), (0.06 + s, 0.0),
            (0.01 + s * 0.6, 0.0), (0.0, 0.44), (-0.01 - s * 0.6, 0.0), (-0.06 - s, 0.0), (-0.09, 0.50),
            (-0.105, 0.52), (-0.14, 0.55), (-0.12, 0.82), (-0.035, 0.86)]
    ang = np.linspace(np.pi * 1.2, -np.pi * 0.2, 9)
    head = [(0.07 * math.cos(a), 0.93 + 0.07 * math.sin(a)) for a in ang]
    return np.array(body + head)


_TORSO = np.array([(0.12, 0.82), (0.14, 0.55), (0.10, 0.47), (-0.10, 0.47), (-0.14, 0.55), (-0.12, 0.82)])


def _person(sc: _Scene, x: float, z: float, label: str = "person", base: float = 0.0,
            height: float | None = None) -> list[Item]:
    rng = sc.rng
    h = height if height is not None else rng.uniform(1.55, 1.95)
    wide = rng.uniform(0.85, 1.2)
    outline = _person_outline(rng.uniform(0.0, 0.08))
    pants = _pick(rng, _CLOTHES_PALETTE, 12)
    shirt = _pick(rng, _CLOTHES_PALETTE, 15)
    skin = _pick(rng, _SKIN_PALETTE, 8)

    def place(pts: np.ndarray) -> np.ndarray:
        return sc.cam.project(x + pts[:, 0] * h * wide, base + pts[:, 1] * h, np.full(len(pts), z))

    items = [Item(place(outline), pants, label), Item(place(_TORSO), shirt)]
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    head = np.stack([0.065 * np.cos(ang), 0.93 + 0.065 * np.sin(ang)], axis=1)
    items.append(Item(place(head), skin))
    if label == "rider" or rng.random() < 0.3:  # helmet / hair / hat
        cap = np.stack([0.075 * np.cos(ang[:5]), 0.95 + 0.06 * np.sin(ang[:5])], axis=1)
        items.append(Item(place(cap), _pick(rng, _CLOTHES_PALETTE, 10)))
    return items


def _two_wheeler(sc: _Scene, x: float, z: float, label: str, direction: float) -> list[Item]:
    """Bicycle or motorcycle seen from the side (crossing), in the plane Z = z."""
    rng = sc.rng
    r = 0.34 if label == "bicycle" else 0.32
    base = 1.05 if label == "bicycle" else 1.4
    top = 1.0 if label == "bicycle" else 1.1
    rear, front = x - direction * base / 2, x + direction * base / 2
    ang = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    pts = []
    for cx in (rear, front):
        pts.append(np.stack([cx + r * np.cos(ang), r + r * np.sin(ang)], axis=1))
    pts.append(np.array([[front - direction * 0.1, top], [rear + direction * 0.25, top * 0.95]]))
    local = np.concatenate(pts)
    px = sc.cam.project(local[:, 0], local[:, 1], np.full(len(local), z))
    hull = cv2.convexHull(px.astype(np.float32))[:, 0, :].astype(np.float64)
    color = _pick(rng, ((40, 40, 45), (150, 30, 30), (30, 60, 120), (170, 170, 170)), 10)
    bg = _shade(sc.pal.road, 1.05) if label == "bicycle" else _shade(color, 0.6)
    items = [Item(hull, bg, label)]
    thick = max(1, round(sc.cam.scale(z) * 0.05))
    for cx in (rear, front):
        ring = np.stack([cx + r * np.cos(ang), r + r * np.sin(ang)], axis=1)
        items.append(Item(sc.cam.project(ring[:, 0], ring[:, 1], np.full(10, z)), (20, 20, 20),
                          line=thick))
    frame = np.array([[rear, r], [x, r], [front, r], [front - direction * 0.1, top],
                      [x, r], [rear + direction * 0.25, top * 0.95], [rear, r]])
    items.append(Item(sc.cam.project(frame[:, 0], frame[:, 1], np.full(len(frame), z)), color, line=thick))
    if label == "motorcycle":
        body = np.array([[rear + direction * 0.3, 0.5], [front - direction * 0.3, 0.5],
                         [front - direction * 0.35, 0.95], [rear + direction * 0.3, 0.85]])
        items.append(Item(sc.cam.project(body[:, 0], body[:, 1], np.full(4, z)), color))
    return items


def _rider(sc: _Scene, x: float, z: float, vehicle: str) -> list[Item]:
    direction = float(sc.rng.choice([-1.0, 1.0]))
    items = _two_wheeler(sc, x, z, vehicle, direction)
    items += _person(sc, x, z, "rider", base=0.3, height=sc.rng.uniform(1.35, 1.55))
    return items


def _static(sc: _Scene, x: float, z: float, label: str) -> list[Item]:
    rng = sc.rng
    w, h = (rng.uniform(0.4, 1.2), rng.uniform(0.5, 1.4)) if label == "static" else (
        rng.uniform(0.4, 0.8), rng.uniform(0.6, 1.0))
    color = _pick(rng, ((60, 90, 60), (90, 90, 95), (140, 110, 80), (160, 160, 165), (40, 40, 45)), 10)
    return [sc.zplane_rect(label, x - w / 2, x + w / 2, 0, h, z, color)]


def _street_objects(sc: _Scene, st: _Street) -> None:
    rng = sc.rng
    add = sc.objects.append
    zmin = 4.0
    # poles along both curbs, with signs, traffic lights and street lamps
    for side in (-1, 1):
        road = st.road_left if side < 0 else st.road_right
        x = side * (st.sidewalk[side][0] + 0.4)
        z = rng.uniform(zmin, 15)
        while z < 140:
            r = rng.random()
            kind = "sign" if r < 0.45 else "light" if r < 0.6 else "lamp" if r < 0.8 else "plain"
            add((z, _pole(sc, x, z, kind)))
            if rng.random() < 0.05:
                add((z, _pole(sc, x + side * 0.35, z + 0.1, "plain")))
            z += rng.uniform(8, 25)
        # trees in the terrain strip or on the sidewalk
        if rng.random() < 0.65 and not st.park[side]:
            xt = side * (st.sidewalk[side][0] + (road - st.sidewalk[side][0]) / 2
                         if st.sidewalk[side][0] > road else st.sidewalk[side][1] - 1.0)
            z = rng.uniform(zmin, 20)
            while z < 120:
                _tree(sc, xt, z)
                z += rng.uniform(7, 16)
        # parked cars along the curb
        if rng.random() < 0.8:
            xc = side * (road - 1.2)
            z = rng.uniform(zmin, 12)
            while z < 90:
                if rng.random() < 0.55:
                    add((z, _car(sc, xc + rng.uniform(-0.15, 0.15), z)))
                z += rng.uniform(5.0, 7.5)
        # pedestrians, bins and other objects on the sidewalk
        inner, outer = st.sidewalk[side]
        for _ in range(int(rng.integers(0, 9))):
            z = rng.uniform(zmin + 2, 45)
            add((z, _person(sc, side * rng.uniform(inner + 0.5, outer - 0.3), z)))
    if rng.random() < 0.2:  # people crossing the street
        z = rng.uniform(8, 25)
        for _ in range(int(rng.integers(1, 5))):
            add((z, _person(sc, rng.uniform(-st.road_left, st.road_right), z + rng.uniform(0, 1.5))))
        for _ in range(int(rng.integers(0, 3))):
            z = rng.uniform(zmin + 2, 60)
            add((z, _static(sc, side * rng.uniform(inner + 0.3, outer - 0.3), z, "static")))
        if rng.random() < 0.2:
            z = rng.uniform(zmin + 2, 40)
            add((z, _static(sc, side * rng.uniform(inner + 0.3, outer - 0.3), z, "dynamic")))
    # traffic in the lanes: oncoming on the left, same direction ahead
    for _ in range(int(rng.integers(0, 4))):
        z = rng.uniform(8, 80)
        x = rng.uniform(-st.road_left + 1.2, -1.0) if rng.random() < 0.5 else rng.uniform(-0.6, 0.6)
        r = rng.random()
        if r < 0.05:
            add((z, _truck(sc, x, z, facing=x < -1.0)))
        elif r < 0.09:
            add((z, _bus(sc, x, z)))
        else:
            add((z, _car(sc, x, z)))
    if rng.random() < 0.06:
        z = rng.uniform(8, 40)
        add((z, _rider(sc, rng.uniform(-st.road_left + 1, st.road_right - 1), z,
                       "bicycle" if rng.random() < 0.7 else "motorcycle")))
    if rng.random() < 0.1:  # a parked bicycle
        side = int(rng.choice([-1, 1]))
        z = rng.uniform(6, 30)
        add((z, _two_wheeler(sc, side * (st.sidewalk[side][1] - 0.6), z, "bicycle", 1.0)))
    if rng.random() < 0.05:
        _tram(sc, st, rng.uniform(15, 50), forced=False)
    if rng.random() < 0.04:  # a railway bridge across the street (void: ignored in evaluation)
        z = rng.uniform(40, 80)
        add((z, [sc.zplane_rect("bridge", -60, 60, 5.0, 7.0, z, _jitter(rng, (120, 115, 110), 8))]))
    if rng.random() < 0.06:  # guard rail along the left road edge
        sc.background.append(sc.xplane_quad("guard rail", -st.road_left + 0.2, 6, 60, 0.3, 0.8,
                                            _jitter(rng, (170, 170, 175), 6)))


def _tram(sc: _Scene, st: _Street, z: float, forced: bool) -> None:
    x = -min(st.road_left - 1.5, 2.0)
    track = _shade(sc.pal.road, 0.8)
    track_item = sc.ground_band("rail track", x - 0.9, x + 0.9, 4.0, st.far_z, track)
    # rails are part of the ground: drawn right after the road so other objects occlude them
    sc.background.append(track_item)
    items = _bus(sc, x, z, label="train")
    (sc.forced if forced else sc.objects).append((z, items))


def _guaranteed(sc: _Scene, st: _Street) -> None:
    """Place this image's guaranteed rare objects where nothing occludes them."""
    rng = sc.rng
    for name in sorted(sc.guaranteed):
        z = rng.uniform(10, 22)
        if name == "terrain":
            continue  # a terrain strip along the road: see _street
        side = int(rng.choice([-1, 1]))
        inner, outer = st.sidewalk[side]
        if name == "wall":  # a garden wall across the sidewalk
            sc.forced.append((z, [sc.zplane_rect("wall", side * (inner + 0.5), side * st.building_x[side], 0,
                                                 rng.uniform(0.8, 1.6), z, _jitter(rng, sc.pal.wall, 6))]))
        elif name == "fence":  # a building-site fence on the sidewalk
            x0, x1 = sorted((side * (inner + 0.3), side * outer))
            sc.forced.append((z, _cross_fence(sc, x0, x1, z, rng.uniform(1.0, 2.0))))
        elif name == "traffic light":
            x = st.road_right + 0.6
            sc.forced.append((z, _pole(sc, x, z, "light")))
        elif name == "rider":
            sc.forced.append((z, _rider(sc, rng.uniform(-1.5, 1.5), z, "bicycle")))
        elif name in ("bicycle", "motorcycle"):
            side = -1 if name == "bicycle" else 1
            sc.forced.append((z, _two_wheeler(sc, rng.uniform(-2.0, 2.0), z, name, 1.0)))
        elif name == "truck":
            sc.forced.append((z + 12, _truck(sc, rng.uniform(-1.0, 0.5), z + 12, facing=False)))
        elif name == "bus":
            sc.forced.append((z + 12, _bus(sc, rng.uniform(-1.0, 0.5), z + 12)))
        elif name == "train":
            _tram(sc, st, z + 15, forced=True)


def _foreground(sc: _Scene) -> None:
    """Ego-vehicle hood, rectification border and out-of-roi corners: void labels, as in the real
    data; the only labels the test split keeps."""
    rng, cam = sc.rng, sc.cam
    h, w = cam.height, cam.width
    top = h * rng.uniform(0.86, 0.92)
    edge = h * rng.uniform(0.93, 0.97)
    xs = np.linspace(0, w - 1, 13)
    ys = edge - (edge - top) * np.sin(np.linspace(0, np.pi, 13)) ** 0.6
    hood = np.concatenate([xs[:, None], ys[:, None]], axis=1)
    hood = np.concatenate([hood, [[w - 1, h - 1], [0, h - 1]]])
    sc.foreground.append(Item(hood, _jitter(rng, (35, 38, 45), 6), "ego vehicle"))
    # the sky reflected on the hood
    refl = hood[3:10].copy()
    refl[:, 1] += (h - 1 - refl[:, 1]) * 0.25
    refl = np.concatenate([refl, hood[9:2:-1] + [0, (h - top) * 0.3]])
    sc.foreground.append(Item(refl, _shade(sc.pal.sky, 0.45)))
    bw = max(1.0, w * rng.uniform(0.002, 0.006))
    sc.foreground.append(Item(np.array([[0, 0], [bw, 0], [bw, h - 1], [0, h - 1]]), (0, 0, 0),
                              "rectification border"))
    sc.foreground.append(Item(np.array([[w - 1 - bw, 0], [w - 1, 0], [w - 1, h - 1], [w - 1 - bw, h - 1]]),
                              (0, 0, 0), "rectification border"))
    c = w * rng.uniform(0.03, 0.06)
    for corner in ([[0, h - 1], [c, h - 1], [0, h - 1 - c * 0.5]],
                   [[w - 1, h - 1], [w - 1 - c, h - 1], [w - 1, h - 1 - c * 0.5]]):
        sc.foreground.append(Item(np.array(corner, float), (0, 0, 0), "out of roi"))


def build_scene(rng: np.random.Generator, height: int, width: int, guaranteed: frozenset[str] = frozenset()
                ) -> list[Item]:
    """All drawing operations of one image, in painter's order."""
    sc = _Scene(rng, _camera(rng, height, width), _palette(rng), guaranteed)
    st = _street(rng, guaranteed)
    _background(sc, st)
    _street_objects(sc, st)
    _guaranteed(sc, st)
    _foreground(sc)
    items = list(sc.background)
    # painter's order, far to near (the sort is stable: an object's own parts keep their order)
    for _, group in sorted(_clear_view(sc.objects, sc.forced) + sc.forced, key=lambda dz: -dz[0]):
        items.extend(group)
    items.extend(sc.foreground)
    return items


def _bbox(group: list[Item]) -> np.ndarray:
    pts = np.concatenate([it.points for it in group if it.label is not None])
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


def _clear_view(objects: list[tuple[float, list[Item]]], forced: list[tuple[float, list[Item]]]
                ) -> list[tuple[float, list[Item]]]:
    """Drop the objects that stand in front of a guaranteed one, so that it stays visible."""
    boxes = [(z, _bbox(g)) for z, g in forced]
    kept = []
    for z, group in objects:
        b = _bbox(group)
        if not any(z < fz and b[0] < fb[2] and fb[0] < b[2] and b[1] < fb[3] and fb[1] < b[3] for fz, fb in boxes):
            kept.append((z, group))
    return kept


# --- rasterisation and rendering ----------------------------------------------------------------


def _clip(poly: np.ndarray, w: int, h: int) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to the image rectangle [0, w-1] x [0, h-1]."""
    out = poly
    for axis, bound, keep_below in ((0, 0.0, False), (0, w - 1.0, True), (1, 0.0, False), (1, h - 1.0, True)):
        if len(out) == 0:
            break
        inside = out[:, axis] <= bound if keep_below else out[:, axis] >= bound
        if inside.all():
            continue
        res = []
        n = len(out)
        for i in range(n):
            cur, nxt = out[i], out[(i + 1) % n]
            cin, nin = inside[i], inside[(i + 1) % n]
            if cin:
                res.append(cur)
            if cin != nin:
                t = (bound - cur[axis]) / (nxt[axis] - cur[axis])
                res.append(cur + t * (nxt - cur))
        out = np.array(res).reshape(-1, 2)
    return out


def _dedupe(pts: np.ndarray) -> np.ndarray:
    keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)
    return pts[keep] if keep.any() else pts[:1]


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label_ids: np.ndarray  # (H, W) uint8
    instance_ids: np.ndarray  # (H, W) uint16
    polygons: dict  # the gtFine polygons JSON document


def render(items: Sequence[Item], height: int, width: int, rng: np.random.Generator,
           keep_labels: Callable[[str], bool] | None = None) -> Rendered:
    """Rasterise the annotated polygons (labelIds, instanceIds, JSON) and paint the image.

    Labels for which ``keep_labels`` is false are painted but not annotated (the test split).
    """
    all_kept = keep_labels is None
    keep_labels = keep_labels or (lambda name: True)
    # Labels are rasterised on a grid with _ROWS rows per pixel row and sampled at the middle
    # row: fillPoly then marks pixels by where the polygon crosses their centre row (the rule
    # Pillow, hence cityscapesScripts, uses) instead of every pixel its outline touches.
    s = _ROWS if height * width <= _LARGE else _ROWS_LARGE
    mid = s // 2
    label = np.zeros((height * s, width), np.uint8)
    inst = np.zeros((height * s, width), np.uint16)
    # class of every painted object, annotated or not: it drives the texture
    visible = label if all_kept else np.zeros((height * s, width), np.uint8)
    canvas = np.zeros((height, width, 3), np.uint8)
    objects: list[dict] = []
    next_instance: dict[int, int] = {}
    for it in items:
        pts = _clip(np.asarray(it.points, np.float64), width, height) if not it.line else it.points
        if len(pts) < (2 if it.line else 3):
            continue
        color = tuple(int(round(c)) for c in it.color)
        if it.line:
            fixed = np.round(np.asarray(pts) * 16).astype(np.int64)
            if np.abs(fixed).max() > 2**28:
                continue  # a line through the camera plane: nothing useful to draw
            cv2.polylines(canvas, [fixed.astype(np.int32)], False, color, it.line, cv2.LINE_AA, 4)
            continue
        if it.label is None:
            cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], color, cv2.LINE_AA, 4)
            continue
        ipts = _dedupe(np.round(pts).astype(np.int32))
        if len(ipts) < 3:
            continue
        cv2.fillPoly(canvas, [ipts], color)
        rows = ipts * (1, s) + (0, mid)
        lab = NAME_TO_LABEL[it.label]
        if not keep_labels(it.label):
            cv2.fillPoly(visible, [rows], lab.id)
            continue
        cv2.fillPoly(label, [rows], lab.id)
        if lab.has_instances:
            k = next_instance.get(lab.id, 0)
            next_instance[lab.id] = k + 1
            cv2.fillPoly(inst, [rows], lab.id * 1000 + k)
        else:
            cv2.fillPoly(inst, [rows], lab.id)
        objects.append({"label": it.label, "polygon": ipts.tolist()})
    label, inst, visible = (np.ascontiguousarray(a[mid::s]) for a in (label, inst, visible))
    image = _finish(canvas, visible, rng)
    doc = {"imgHeight": height, "imgWidth": width, "objects": objects}
    return Rendered(image, label, inst, doc)


def _lowfreq(rng: np.random.Generator, height: int, width: int, cells_h: int, cells_w: int) -> np.ndarray:
    small = rng.standard_normal((max(2, cells_h), max(2, cells_w)), dtype=np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _finish(canvas: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture, shading, sky gradient, blur, colour cast and sensor noise.

    Per-pixel terms are built as single-channel fields first and applied to the three channels
    once: at 1024x2048 every full-colour float pass costs ~10 ms.
    """
    h, w = classes.shape
    fine = rng.standard_normal((h, w), dtype=np.float32)
    mid = _lowfreq(rng, h, w, h // 6, w // 6)
    add = _FINE_LUT[classes] * fine
    add += _MID_LUT[classes] * mid
    # sky: brighter towards the horizon, soft clouds
    sky = classes == _SKY_ID
    rows = np.linspace(-12, 22, h, dtype=np.float32)[:, None]
    clouds = np.maximum(_lowfreq(rng, h, w, 4, 8), 0) * np.float32(rng.uniform(5, 25))
    add += np.where(sky, rows + clouds, np.float32(0))
    # illumination: low-frequency shading, global gain and a colour cast
    shade = 1.0 + np.float32(rng.uniform(0.05, 0.15)) * _lowfreq(rng, h, w, 3, 6)
    gain = (rng.uniform(0.75, 1.2) * (1.0 + rng.uniform(-0.06, 0.06, 3))).astype(np.float32)
    img = canvas.astype(np.float32)
    img += add[:, :, None]
    img *= shade[:, :, None]
    img *= gain
    img = cv2.GaussianBlur(img, (0, 0), max(0.5, h / 512))
    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    noise *= np.float32(rng.uniform(1.5, 4.0))
    img += noise
    img += np.float32(0.5)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


# --- dataset writing ----------------------------------------------------------------------------


def frame_stem(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of image ``index`` of ``split``: cities take turns, seq counts per city."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{FRAME:06d}"


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """An image's generator depends only on (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))


def generate_image(split: str, index: int, height: int = 256, width: int = 512, seed: int = 0) -> Rendered:
    rng = image_rng(seed, split, index)
    guaranteed: frozenset[str] = frozenset()
    if split != "test":
        n = len(GUARANTEED)
        guaranteed = frozenset({GUARANTEED[(2 * index) % n], GUARANTEED[(2 * index + 1) % n]})
    items = build_scene(rng, height, width, guaranteed)
    keep = (lambda name: name in TEST_VOID_LABELS) if split == "test" else None
    return render(items, height, width, rng, keep)


def _write_one(args: tuple[str, str, int, int, int, int]) -> tuple[str, int, int]:
    out_dir, split, index, height, width, seed = args
    r = generate_image(split, index, height, width, seed)
    city, stem = frame_stem(split, index)
    img_dir = os.path.join(out_dir, "leftImg8bit", split, city)
    gt_dir = os.path.join(out_dir, "gtFine", split, city)
    files = {
        os.path.join(img_dir, f"{stem}_leftImg8bit.png"): encode_png(r.image),
        os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"): encode_mask_png(r.label_ids),
        os.path.join(gt_dir, f"{stem}_gtFine_instanceIds.png"): encode_png(r.instance_ids),
        os.path.join(gt_dir, f"{stem}_gtFine_color.png"): encode_png(LABEL_ID_TO_COLOR[r.label_ids]),
        os.path.join(gt_dir, f"{stem}_gtFine_polygons.json"): json.dumps(r.polygons, indent="\t").encode(),
    }
    for path, data in files.items():
        write_bytes_atomic(path, data)
    return split, index, len(files)


def _check_counts(counts: dict[str, int] | None) -> dict[str, int]:
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected some of {list(SPLITS)}")
    for split, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"count for split {split!r} must be a non-negative integer, got {n!r}")
    return {s: counts[s] for s in SPLITS if s in counts}


def generate_dataset(out_dir: str, counts: dict[str, int] | None = None, height: int = 256, width: int = 512,
                     seed: int = 0, workers: int = 1,
                     progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Write the synthetic dataset under ``out_dir`` in the Cityscapes layout.

    ``counts`` maps split -> number of images (default :data:`DEFAULT_COUNTS`). ``progress`` is
    called as ``progress(split, done_in_split, total_in_split)`` after each image. Returns a
    summary: per split the images and files written, the cities, and the total; and in
    ``other_images`` per split the images already there that this run did not write (left by an
    earlier run with larger counts: they are never deleted).
    """
    counts = _check_counts(counts)
    if height < 32 or width < 32:
        raise ValueError(f"image size {height}x{width} is too small; use at least 32x32")
    if height * width > 4096 * 4096:
        raise ValueError(f"image size {height}x{width} is too large (over 4096*4096 pixels)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    tasks = [(out_dir, s, i, height, width, seed) for s, n in counts.items() for i in range(n)]
    done = dict.fromkeys(counts, 0)
    files = dict.fromkeys(counts, 0)

    def record(result: tuple[str, int, int]) -> None:
        split, _, nfiles = result
        done[split] += 1
        files[split] += nfiles
        if progress is not None:
            progress(split, done[split], counts[split])

    if workers == 1 or len(tasks) <= 1:
        for t in tasks:
            record(_write_one(t))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_write_one, tasks, chunksize=max(1, len(tasks) // (8 * workers))):
                record(result)
    summary = {
        "generator": "segops.datasets.synth",
        "segops_version": __version__,
        "options": {"counts": counts, "height": height, "width": width, "seed": seed},
        "splits": {s: {"images": done[s], "files": files[s],
                       "cities": sorted({frame_stem(s, i)[0] for i in range(done[s])})}
                   for s in counts},
    }
    summary["files_written"] = sum(files.values()) + 1
    write_bytes_atomic(os.path.join(out_dir, MANIFEST_NAME), dump_json(summary))
    # not in the manifest (it depends on what was there before): images this run did not write
    summary["other_images"] = {s: _count_images(out_dir, s) - done[s] for s in counts}
    summary["out_dir"] = out_dir
    return summary


def _count_images(out_dir: str, split: str) -> int:
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(out_dir, "leftImg8bit", split, "*", "*_leftImg8bit.png")
    return len(FileSystems.match([pattern])[0].metadata_list)
