"""The scene model and everything behind the street furniture: drawing items, the pinhole camera,
the street's lateral layout, the :class:`Scene` under construction, and the background (sky,
ground bands, road markings, skyline, façades with windows, walls, fences, parks and trees)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segops.datasets.synth.palette import BUILDING_PALETTE, RGB, Palette, jitter, pick, shade


@dataclass
class Item:
    """One drawing operation. ``label`` set: an annotated object (JSON, labelIds, instanceIds and
    image). ``label`` None: paint only (windows, wheels, markings, shadows)."""

    points: np.ndarray  # (N, 2) float pixel coordinates
    color: RGB
    label: str | None = None
    line: int = 0  # > 0: paint an open polyline of this thickness instead of a filled polygon


@dataclass
class Camera:
    """A pinhole camera looking along the street, its horizon row and principal column in pixels."""

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


@dataclass
class Street:
    """Lateral layout of the street, in metres (left side negative X)."""

    road_left: float
    road_right: float
    sidewalk: dict[int, tuple[float, float]]  # side -> (inner X, outer X) as magnitudes
    building_x: dict[int, float]  # side -> |X| of the façade line
    park: dict[int, bool]  # side -> no buildings, trees and terrain instead
    far_z: float  # where the street ends (skyline)


@dataclass
class Scene:
    """One image's scene under construction: what each builder appends to, in drawing layers."""

    rng: np.random.Generator
    cam: Camera
    pal: Palette
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


# --- the street and its background ---------------------------------------------------------------


def random_camera(rng: np.random.Generator, height: int, width: int) -> Camera:
    return Camera(
        height=height,
        width=width,
        focal=width * rng.uniform(1.0, 1.2),
        cam_h=rng.uniform(1.15, 1.4),
        cx=width * rng.uniform(0.42, 0.58),
        horizon=height * rng.uniform(0.36, 0.46),
    )


def random_street(rng: np.random.Generator, guaranteed: frozenset[str]) -> Street:
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
    return Street(road_left, road_right, sidewalk, building_x, park, far_z=rng.uniform(90, 260))


def add_background(sc: Scene, st: Street) -> None:
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
            add(Item(cam.project([xk, xk], [0, 0], [z_near, z_far]), shade(pal.sidewalk, 0.85), line=1))
        if st.building_x[side] > outer and not st.park[side]:
            label = "terrain" if rng.random() < 0.6 else "ground"
            color = pal.terrain if label == "terrain" else pal.ground
            add(sc.ground_band(label, side * st.building_x[side], side * outer, z_near, z_far, color))
        if inner > road:
            add(sc.ground_band("terrain", side * inner, side * road, z_near, z_far, pal.terrain))
        # curb stones
        add(Item(cam.project([side * road] * 2, [0, 0], [z_near, z_far]), shade(pal.sidewalk, 1.15),
                 line=max(1, round(h / 256))))
    add(sc.ground_band("road", -st.road_left, st.road_right, z_near, z_far, road_c))
    _road_markings(sc, st)
    if rng.random() < 0.18:  # parking lane along the right curb
        add(sc.ground_band("parking", st.road_right - 2.2, st.road_right, z_near, z_far,
                           jitter(rng, road_c, 10)))
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


def _road_markings(sc: Scene, st: Street) -> None:
    rng = sc.rng
    white = jitter(rng, (215, 215, 210), 8)
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


def _skyline(sc: Scene, st: Street) -> None:
    """Buildings (and some trees) across the end of the street."""
    rng = sc.rng
    z = st.far_z
    x = -rng.uniform(60, 90)
    while x < 80:
        width = rng.uniform(8, 25)
        if rng.random() < 0.2:
            c = jitter(rng, sc.pal.vegetation, 8)
            sc.background.append(_canopy(sc, x + width / 2, rng.uniform(4, 9), width / 2, rng.uniform(3, 6), z, c))
        elif rng.random() < 0.85:
            color = pick(rng, BUILDING_PALETTE, 15)
            sc.background.append(sc.zplane_rect("building", x, x + width, 0, rng.uniform(6, 35), z, color))
        x += width


def _facades(sc: Scene, st: Street, side: int) -> None:
    rng, cam = sc.rng, sc.cam
    xb = side * st.building_x[side]
    z = 3.0
    while z < st.far_z:
        length = rng.uniform(8, 28)
        z1 = min(z + length, st.far_z)
        if rng.random() < 0.08 and z > 15:  # a gap: a tree behind, sky above
            c = jitter(rng, sc.pal.vegetation, 8)
            sc.background.append(_canopy(sc, xb + side * 3, rng.uniform(4, 8), 3.0, rng.uniform(3, 5), (z + z1) / 2, c))
            z = z1
            continue
        height = rng.uniform(7, 26)
        color = pick(rng, BUILDING_PALETTE, 18)
        sc.background.append(sc.xplane_quad("building", xb, z, z1, 0, height, shade(color, 0.92 if side < 0 else 1.0)))
        # windows on a floor grid, equally spaced in depth (so foreshortened on screen)
        if cam.scale(z) * 1.0 >= 1.5:  # windows at least ~1.5 px tall
            glass = jitter(rng, (60, 70, 85) if rng.random() < 0.7 else (150, 160, 170), 10)
            frame = rng.uniform(0.6, 1.3)
            ww, wh = rng.uniform(0.9, 1.5), rng.uniform(1.2, 1.7)
            spacing = rng.uniform(2.6, 3.6)
            floor_h = rng.uniform(2.9, 3.5)
            y = rng.uniform(3.0, 4.0)
            while y + wh < height - 0.5:
                zz = z + frame
                while zz + ww < z1 - 0.5:
                    lit = shade(glass, rng.uniform(0.8, 1.25))
                    sc.background.append(sc.xplane_quad(None, xb, zz, zz + ww, y, y + wh, lit))
                    zz += spacing
                y += floor_h
            # ground floor: shop windows or doors
            if rng.random() < 0.5:
                sc.background.append(sc.xplane_quad(None, xb, z + 1, z1 - 1, 0.4, 2.6, shade(glass, 0.8)))
        z = z1
    _along_facade(sc, st, side)


def _along_facade(sc: Scene, st: Street, side: int) -> None:
    """Hedges, walls and fences along the building line."""
    rng = sc.rng
    x = side * (st.building_x[side] - 0.3)
    z = rng.uniform(4, 12)
    while z < min(st.far_z, 120):
        length = rng.uniform(5, 20)
        r = rng.random()
        if r < 0.12:
            h = rng.uniform(0.8, 2.4)
            sc.background.append(sc.xplane_quad("wall", x, z, z + length, 0, h, jitter(rng, sc.pal.wall, 6)))
        elif r < 0.22:
            sc.background.extend(_fence(sc, x, z, z + length, rng.uniform(1.0, 2.0)))
        elif r < 0.32:
            h = rng.uniform(0.7, 1.6)
            sc.background.append(sc.xplane_quad("vegetation", x, z, z + length, 0, h,
                                                jitter(rng, sc.pal.vegetation, 8)))
        z += length + rng.uniform(5, 25)


def _fence(sc: Scene, x: float, z0: float, z1: float, h: float) -> list[Item]:
    """A fence along the street (plane X = x): posts and rails painted over a darker fill."""
    rng = sc.rng
    color = jitter(rng, sc.pal.fence, 8)
    items = [sc.xplane_quad("fence", x, z0, z1, 0, h, shade(color, 0.75))]
    post = shade(color, 1.25)
    zz = z0
    while zz <= z1:
        items.append(Item(sc.cam.project([x, x], [0, h], [zz, zz]), post, line=1))
        zz += rng.uniform(1.5, 2.5)
    for y in (h * 0.15, h * 0.9):
        items.append(Item(sc.cam.project([x, x], [y, y], [z0, z1]), post, line=1))
    return items


def cross_fence(sc: Scene, x0: float, x1: float, z: float, h: float) -> list[Item]:
    """A fence facing the camera (building site, yard boundary)."""
    rng = sc.rng
    color = jitter(rng, sc.pal.fence, 8)
    items = [sc.zplane_rect("fence", x0, x1, 0, h, z, shade(color, 0.75))]
    post = shade(color, 1.25)
    n = max(2, int(abs(x1 - x0) / 0.4))
    for xx in np.linspace(x0, x1, n):
        items.append(Item(sc.cam.project([xx, xx], [0, h], [z, z]), post, line=1))
    items.append(Item(sc.cam.project([x0, x1], [h * 0.9] * 2, [z, z]), post, line=1))
    return items


def _park(sc: Scene, st: Street, side: int) -> None:
    rng = sc.rng
    z = rng.uniform(5, 15)
    while z < st.far_z:
        x = side * rng.uniform(st.sidewalk[side][1] + 2, st.sidewalk[side][1] + 25)
        tree(sc, x, z)
        z += rng.uniform(4, 12)
    if rng.random() < 0.5:
        x = side * (st.sidewalk[side][1] + 0.3)
        sc.background.extend(_fence(sc, x, rng.uniform(5, 10), rng.uniform(30, 60), rng.uniform(1.0, 1.8)))


def _canopy(sc: Scene, x: float, y: float, rx: float, ry: float, z: float, color: RGB) -> Item:
    """A jagged ellipse of leaves in the plane facing the camera."""
    n = 18
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 + sc.rng.uniform(-0.18, 0.18, n)
    return sc.poly("vegetation", x + rx * r * np.cos(ang), y + ry * r * np.sin(ang), np.full(n, z), color)


def tree(sc: Scene, x: float, z: float) -> None:
    rng = sc.rng
    height = rng.uniform(4, 11)
    trunk_w = rng.uniform(0.2, 0.4)
    items = [sc.zplane_rect("vegetation", x - trunk_w / 2, x + trunk_w / 2, 0, height * 0.6, z,
                            jitter(rng, (80, 65, 50), 10))]
    rx = rng.uniform(1.5, 3.5)
    items.append(_canopy(sc, x, height - rx * 0.8, rx, rx * rng.uniform(0.8, 1.2), z,
                         jitter(rng, sc.pal.vegetation, 10)))
    sc.objects.append((z, items))

