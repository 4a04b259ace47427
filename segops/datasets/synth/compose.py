"""Where things go and in which order: street furniture, parked and moving traffic and people
along the street, the image's guaranteed rare classes (placed where nothing occludes them), the
void foreground (ego-vehicle hood, rectification border, out of roi), and :func:`build_scene`,
which puts it all in painter's order."""

from __future__ import annotations

import numpy as np

from segops.datasets.synth.objects import bus, car, person, pole, rider, static, truck, two_wheeler
from segops.datasets.synth.palette import jitter, random_palette, shade
from segops.datasets.synth.scene import (
    Item,
    Scene,
    Street,
    add_background,
    cross_fence,
    random_camera,
    random_street,
    tree,
)


def _street_objects(sc: Scene, st: Street) -> None:
    """Poles, trees, parked and moving traffic, people and void objects along the street."""
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
            add((z, pole(sc, x, z, kind)))
            if rng.random() < 0.05:
                add((z, pole(sc, x + side * 0.35, z + 0.1, "plain")))
            z += rng.uniform(8, 25)
        # trees in the terrain strip or on the sidewalk
        if rng.random() < 0.65 and not st.park[side]:
            xt = side * (st.sidewalk[side][0] + (road - st.sidewalk[side][0]) / 2
                         if st.sidewalk[side][0] > road else st.sidewalk[side][1] - 1.0)
            z = rng.uniform(zmin, 20)
            while z < 120:
                tree(sc, xt, z)
                z += rng.uniform(7, 16)
        # parked cars along the curb
        if rng.random() < 0.8:
            xc = side * (road - 1.2)
            z = rng.uniform(zmin, 12)
            while z < 90:
                if rng.random() < 0.55:
                    add((z, car(sc, xc + rng.uniform(-0.15, 0.15), z)))
                z += rng.uniform(5.0, 7.5)
        # pedestrians, bins and other objects on the sidewalk
        inner, outer = st.sidewalk[side]
        for _ in range(int(rng.integers(0, 9))):
            z = rng.uniform(zmin + 2, 45)
            add((z, person(sc, side * rng.uniform(inner + 0.5, outer - 0.3), z)))
    if rng.random() < 0.2:  # people crossing the street
        z = rng.uniform(8, 25)
        for _ in range(int(rng.integers(1, 5))):
            add((z, person(sc, rng.uniform(-st.road_left, st.road_right), z + rng.uniform(0, 1.5))))
        for _ in range(int(rng.integers(0, 3))):
            z = rng.uniform(zmin + 2, 60)
            add((z, static(sc, side * rng.uniform(inner + 0.3, outer - 0.3), z, "static")))
        if rng.random() < 0.2:
            z = rng.uniform(zmin + 2, 40)
            add((z, static(sc, side * rng.uniform(inner + 0.3, outer - 0.3), z, "dynamic")))
    # traffic in the lanes: oncoming on the left, same direction ahead
    for _ in range(int(rng.integers(0, 4))):
        z = rng.uniform(8, 80)
        x = rng.uniform(-st.road_left + 1.2, -1.0) if rng.random() < 0.5 else rng.uniform(-0.6, 0.6)
        r = rng.random()
        if r < 0.05:
            add((z, truck(sc, x, z, facing=x < -1.0)))
        elif r < 0.09:
            add((z, bus(sc, x, z)))
        else:
            add((z, car(sc, x, z)))
    if rng.random() < 0.06:
        z = rng.uniform(8, 40)
        add((z, rider(sc, rng.uniform(-st.road_left + 1, st.road_right - 1), z,
                       "bicycle" if rng.random() < 0.7 else "motorcycle")))
    if rng.random() < 0.1:  # a parked bicycle
        side = int(rng.choice([-1, 1]))
        z = rng.uniform(6, 30)
        add((z, two_wheeler(sc, side * (st.sidewalk[side][1] - 0.6), z, "bicycle", 1.0)))
    if rng.random() < 0.05:
        _tram(sc, st, rng.uniform(15, 50), forced=False)
    if rng.random() < 0.04:  # a railway bridge across the street (void: ignored in evaluation)
        z = rng.uniform(40, 80)
        add((z, [sc.zplane_rect("bridge", -60, 60, 5.0, 7.0, z, jitter(rng, (120, 115, 110), 8))]))
    if rng.random() < 0.06:  # guard rail along the left road edge
        sc.background.append(sc.xplane_quad("guard rail", -st.road_left + 0.2, 6, 60, 0.3, 0.8,
                                            jitter(rng, (170, 170, 175), 6)))


def _tram(sc: Scene, st: Street, z: float, forced: bool) -> None:
    x = -min(st.road_left - 1.5, 2.0)
    track = shade(sc.pal.road, 0.8)
    track_item = sc.ground_band("rail track", x - 0.9, x + 0.9, 4.0, st.far_z, track)
    # rails are part of the ground: drawn right after the road so other objects occlude them
    sc.background.append(track_item)
    items = bus(sc, x, z, label="train")
    (sc.forced if forced else sc.objects).append((z, items))


def _guaranteed(sc: Scene, st: Street) -> None:
    """Place this image's guaranteed rare objects where nothing occludes them."""
    rng = sc.rng
    for name in sorted(sc.guaranteed):
        z = rng.uniform(10, 22)
        if name == "terrain":
            continue  # a terrain strip along the road: see random_street
        side = int(rng.choice([-1, 1]))
        inner, outer = st.sidewalk[side]
        if name == "wall":  # a garden wall across the sidewalk
            sc.forced.append((z, [sc.zplane_rect("wall", side * (inner + 0.5), side * st.building_x[side], 0,
                                                 rng.uniform(0.8, 1.6), z, jitter(rng, sc.pal.wall, 6))]))
        elif name == "fence":  # a building-site fence on the sidewalk
            x0, x1 = sorted((side * (inner + 0.3), side * outer))
            sc.forced.append((z, cross_fence(sc, x0, x1, z, rng.uniform(1.0, 2.0))))
        elif name == "traffic light":
            x = st.road_right + 0.6
            sc.forced.append((z, pole(sc, x, z, "light")))
        elif name == "rider":
            sc.forced.append((z, rider(sc, rng.uniform(-1.5, 1.5), z, "bicycle")))
        elif name in ("bicycle", "motorcycle"):
            side = -1 if name == "bicycle" else 1
            sc.forced.append((z, two_wheeler(sc, rng.uniform(-2.0, 2.0), z, name, 1.0)))
        elif name == "truck":
            sc.forced.append((z + 12, truck(sc, rng.uniform(-1.0, 0.5), z + 12, facing=False)))
        elif name == "bus":
            sc.forced.append((z + 12, bus(sc, rng.uniform(-1.0, 0.5), z + 12)))
        elif name == "train":
            _tram(sc, st, z + 15, forced=True)


def _foreground(sc: Scene) -> None:
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
    sc.foreground.append(Item(hood, jitter(rng, (35, 38, 45), 6), "ego vehicle"))
    # the sky reflected on the hood
    refl = hood[3:10].copy()
    refl[:, 1] += (h - 1 - refl[:, 1]) * 0.25
    refl = np.concatenate([refl, hood[9:2:-1] + [0, (h - top) * 0.3]])
    sc.foreground.append(Item(refl, shade(sc.pal.sky, 0.45)))
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
    sc = Scene(rng, random_camera(rng, height, width), random_palette(rng), guaranteed)
    st = random_street(rng, guaranteed)
    add_background(sc, st)
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
