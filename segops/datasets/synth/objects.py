"""Street furniture and traffic, one builder per kind: poles with signs, traffic lights and lamps;
cars, trucks, buses and trams made of boxes; persons; bicycles and motorcycles with their riders;
static and dynamic void objects. Each returns its drawing items (annotated outline first, then
paint-only details); :mod:`.compose` decides where they stand."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from segops.datasets.synth.palette import (
    CAR_PALETTE,
    CLOTHES_PALETTE,
    RGB,
    SIGN_PALETTE,
    SKIN_PALETTE,
    jitter,
    pick,
    shade,
)
from segops.datasets.synth.scene import Item, Scene


def pole(sc: Scene, x: float, z: float, kind: str) -> list[Item]:
    """A pole; kind: plain, sign, light (traffic light), lamp (street light)."""
    rng, pal = sc.rng, sc.pal
    height = rng.uniform(3.0, 4.0) if kind == "sign" else rng.uniform(4.0, 8.0)
    w = rng.uniform(0.12, 0.25) / 2
    # keep a pole at least ~1 px wide at any depth
    w = max(w, 0.5 / sc.cam.scale(z))
    items = [sc.zplane_rect("pole", x - w, x + w, 0, height, z, jitter(rng, pal.pole, 5))]
    if kind == "sign":
        items += _sign(sc, x, height - rng.uniform(0.3, 0.6), z)
        if rng.random() < 0.3:
            items += _sign(sc, x, height - 1.2, z)
    elif kind == "light":
        items += _traffic_light(sc, x, height - rng.uniform(0.2, 1.5), z)
        if rng.random() < 0.5:  # a mast arm over the road with a second light hanging from it
            reach = -np.sign(x) * rng.uniform(2.5, 5.0)
            items.append(sc.zplane_rect("pole", min(x, x + reach), max(x, x + reach), height - 0.2, height, z,
                                        jitter(rng, pal.pole, 5)))
            items += _traffic_light(sc, x + reach, height - 0.2, z)
    elif kind == "lamp":
        reach = -np.sign(x) * rng.uniform(1.0, 3.0)
        items.append(sc.zplane_rect("pole", min(x, x + reach), max(x, x + reach), height - 0.15, height, z,
                                    jitter(rng, pal.pole, 5)))
        items.append(sc.zplane_rect("pole", x + reach - 0.3, x + reach + 0.3, height - 0.35, height, z,
                                    shade(pal.pole, 1.2)))
    return items


def _sign(sc: Scene, x: float, y: float, z: float) -> list[Item]:
    rng = sc.rng
    size = rng.uniform(0.6, 0.9)
    shape = int(rng.integers(4))
    n = {0: 12, 1: 3, 2: 4, 3: 4}[shape]
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + {0: 0, 1: np.pi / 2, 2: np.pi / 4, 3: 0}[shape]
    xs, ys = x + size / 2 * np.cos(ang), y + size / 2 * np.sin(ang)
    face = pick(rng, SIGN_PALETTE, 12)
    items = [sc.poly("traffic sign", xs, ys, np.full(n, z), face)]
    inner = (235, 235, 235) if face[0] < 200 or face[2] > 150 else (40, 40, 40)
    items.append(sc.poly(None, x + size / 3.2 * np.cos(ang), y + size / 3.2 * np.sin(ang), np.full(n, z),
                         jitter(rng, inner, 10)))
    return items


def _traffic_light(sc: Scene, x: float, y: float, z: float) -> list[Item]:
    rng = sc.rng
    w, h = rng.uniform(0.35, 0.45), rng.uniform(0.9, 1.1)
    items = [sc.zplane_rect("traffic light", x - w / 2, x + w / 2, y - h, y, z, jitter(rng, (35, 35, 30), 6))]
    lit = int(rng.integers(3))
    for k, c in enumerate(((230, 40, 30), (240, 180, 20), (40, 220, 90))):
        color = c if k == lit else (60, 60, 55)
        cy = y - h * (k + 0.5) / 3
        items.append(sc.zplane_rect(None, x - w * 0.3, x + w * 0.3, cy - h * 0.11, cy + h * 0.11, z, color))
    return items


def _box_items(sc: Scene, label: str, x0: float, x1: float, z0: float, z1: float,
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
    items = [Item(hull, shade(color, 0.75), label)]
    # the visible faces, far to near: side faces, then top, then the face towards the camera
    for bx0, bx1, by0, by1, bz0, bz1 in boxes:
        if bx1 < 0:
            items.append(sc.xplane_quad(None, bx1, bz0, bz1, by0, by1, shade(color, 0.85)))
        elif bx0 > 0:
            items.append(sc.xplane_quad(None, bx0, bz0, bz1, by0, by1, shade(color, 0.8)))
        if by1 < cam.cam_h:
            items.append(sc.poly(None, [bx0, bx1, bx1, bx0], [by1] * 4, [bz0, bz0, bz1, bz1], shade(color, 1.1)))
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


def _glass(sc: Scene, box: tuple[float, float, float, float, float, float], glass: RGB) -> list[Item]:
    bx0, bx1, by0, by1, bz0, bz1 = box
    m = 0.12
    gy0, gy1 = by0 + (by1 - by0) * 0.15, by1 - m
    items = [sc.zplane_rect(None, bx0 + m, bx1 - m, gy0, gy1, bz0, glass)]
    if bx1 < 0:
        items.append(sc.xplane_quad(None, bx1, bz0 + m, bz1 - m, gy0, gy1, shade(glass, 0.9)))
    elif bx0 > 0:
        items.append(sc.xplane_quad(None, bx0, bz0 + m, bz1 - m, gy0, gy1, shade(glass, 0.9)))
    return items


def _shadow(sc: Scene, x0: float, x1: float, z0: float, z1: float) -> Item:
    return sc.ground_band(None, x0 - 0.15, x1 + 0.15, z0 - 0.2, z1 + 0.2, shade(sc.pal.road, 0.45))


def car(sc: Scene, x: float, z: float) -> list[Item]:
    rng = sc.rng
    w, length = rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.9)
    body_h, roof = rng.uniform(0.85, 1.05), rng.uniform(1.35, 1.6)
    color = pick(rng, CAR_PALETTE, 12)
    x0, x1 = x - w / 2, x + w / 2
    cab_len = length * rng.uniform(0.45, 0.6)
    cz0 = z + length * rng.uniform(0.18, 0.3)
    boxes = [(x0, x1, 0.22, body_h, z, z + length),
             (x0 + 0.12, x1 - 0.12, body_h, roof, cz0, cz0 + cab_len)]
    items = [_shadow(sc, x0, x1, z, z + length)]
    items += _box_items(sc, "car", x0, x1, z, z + length, boxes, color, jitter(rng, (40, 45, 55), 8))
    # tail lights
    for lx in (x0 + 0.1, x1 - 0.4):
        items.append(sc.zplane_rect(None, lx, lx + 0.3, body_h - 0.3, body_h - 0.12, z, (190, 30, 25)))
    return items


def truck(sc: Scene, x: float, z: float, facing: bool) -> list[Item]:
    rng = sc.rng
    w = rng.uniform(2.3, 2.55)
    cargo_len, cab_len = rng.uniform(5, 9), 2.2
    cargo_h, cab_h = rng.uniform(3.0, 3.8), rng.uniform(2.6, 3.0)
    x0, x1 = x - w / 2, x + w / 2
    cab = (x0, x1, 0.5, cab_h, z, z + cab_len) if facing else (x0, x1, 0.5, cab_h, z + cargo_len, z + cargo_len + cab_len)
    cargo = (x0, x1, 0.7, cargo_h, z + cab_len + 0.2, z + cab_len + 0.2 + cargo_len) if facing else (
        x0, x1, 0.7, cargo_h, z, z + cargo_len)
    color = pick(rng, ((230, 230, 230), (180, 40, 35), (40, 70, 140), (200, 180, 60), (90, 95, 100)), 10)
    boxes = [cargo, cab] if facing else [cab, cargo]
    z1 = z + cargo_len + cab_len + 0.2
    items = [_shadow(sc, x0, x1, z, z1)]
    items += _box_items(sc, "truck", x0, x1, z, z1, boxes, color,
                        jitter(rng, (45, 50, 60), 8) if facing else None)
    return items


def bus(sc: Scene, x: float, z: float, label: str = "bus") -> list[Item]:
    rng = sc.rng
    w = rng.uniform(2.4, 2.55)
    length = rng.uniform(10, 14) if label == "bus" else rng.uniform(20, 30)
    h = rng.uniform(2.9, 3.3)
    palette = ((230, 200, 40), (235, 235, 230), (190, 40, 40), (40, 80, 150)) if label == "bus" else (
        (200, 30, 35), (235, 235, 230), (30, 90, 160))
    color = pick(rng, palette, 8)
    x0, x1 = x - w / 2, x + w / 2
    box = (x0, x1, 0.35, h, z, z + length)
    items = [_shadow(sc, x0, x1, z, z + length)]
    items += _box_items(sc, label, x0, x1, z, z + length, [box], color, None)
    glass = jitter(rng, (40, 45, 55), 6)
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


def person(sc: Scene, x: float, z: float, label: str = "person", base: float = 0.0,
            height: float | None = None) -> list[Item]:
    rng = sc.rng
    h = height if height is not None else rng.uniform(1.55, 1.95)
    wide = rng.uniform(0.85, 1.2)
    outline = _person_outline(rng.uniform(0.0, 0.08))
    pants = pick(rng, CLOTHES_PALETTE, 12)
    shirt = pick(rng, CLOTHES_PALETTE, 15)
    skin = pick(rng, SKIN_PALETTE, 8)

    def place(pts: np.ndarray) -> np.ndarray:
        return sc.cam.project(x + pts[:, 0] * h * wide, base + pts[:, 1] * h, np.full(len(pts), z))

    items = [Item(place(outline), pants, label), Item(place(_TORSO), shirt)]
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    head = np.stack([0.065 * np.cos(ang), 0.93 + 0.065 * np.sin(ang)], axis=1)
    items.append(Item(place(head), skin))
    if label == "rider" or rng.random() < 0.3:  # helmet / hair / hat
        cap = np.stack([0.075 * np.cos(ang[:5]), 0.95 + 0.06 * np.sin(ang[:5])], axis=1)
        items.append(Item(place(cap), pick(rng, CLOTHES_PALETTE, 10)))
    return items


def two_wheeler(sc: Scene, x: float, z: float, label: str, direction: float) -> list[Item]:
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
    color = pick(rng, ((40, 40, 45), (150, 30, 30), (30, 60, 120), (170, 170, 170)), 10)
    bg = shade(sc.pal.road, 1.05) if label == "bicycle" else shade(color, 0.6)
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


def rider(sc: Scene, x: float, z: float, vehicle: str) -> list[Item]:
    direction = float(sc.rng.choice([-1.0, 1.0]))
    items = two_wheeler(sc, x, z, vehicle, direction)
    items += person(sc, x, z, "rider", base=0.3, height=sc.rng.uniform(1.35, 1.55))
    return items


def static(sc: Scene, x: float, z: float, label: str) -> list[Item]:
    rng = sc.rng
    w, h = (rng.uniform(0.4, 1.2), rng.uniform(0.5, 1.4)) if label == "static" else (
        rng.uniform(0.4, 0.8), rng.uniform(0.6, 1.0))
    color = pick(rng, ((60, 90, 60), (90, 90, 95), (140, 110, 80), (160, 160, 165), (40, 40, 45)), 10)
    return [sc.zplane_rect(label, x - w / 2, x + w / 2, 0, h, z, color)]

