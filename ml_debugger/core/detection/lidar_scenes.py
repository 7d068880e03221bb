"""Procedural LiDAR-like frames: a ray-cast ground plane, objects and clutter, seeded.

This data is **procedural**, not recorded: it exists so that 3D tests and the 3D demo run a real
detector with real mistakes, offline and in seconds. A frame is what a 32-beam spinning sensor
1.8 m above a (slightly tilted) ground sees over the front half-circle: each ray stops at the
nearest surface it meets (so near objects hide far ones and density falls with range), with
range noise, and rays that meet nothing within range return nothing.

Objects (labelled, as ``[x, y, z, dx, dy, dz, yaw]`` in the sensor frame): ``car`` (boxes about
4 × 1.8 × 1.5 m), ``pedestrian`` (upright cylinders, labelled by their bounding box) and
``cyclist`` (boxes about 1.8 × 0.6 × 1.7 m). Clutter (not labelled): poles and low walls. An
object hit by fewer than ``MIN_POINTS`` rays is not labelled (nobody could).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLASSES = ("car", "pedestrian", "cyclist")
PC_RANGE = (0.0, -20.0, -3.0, 40.0, 20.0, 1.0)
BEAMS = 32
AZIMUTH_STEPS = 360  # over the front half-circle: 0.5° apart
MAX_RANGE = 45.0
SENSOR_HEIGHT = 1.8
MIN_POINTS = 5
_SIZES = {0: (4.0, 1.8, 1.5), 2: (1.8, 0.6, 1.7)}


@dataclass(frozen=True)
class Frame:
    points: np.ndarray  # [N, 4] float32: x, y, z, intensity
    boxes: np.ndarray  # [K, 7] float32
    labels: np.ndarray  # [K] int64


def _rays() -> np.ndarray:
    elev = np.radians(np.linspace(-24.0, 2.0, BEAMS))
    azim = np.radians(np.linspace(-90.0, 90.0, AZIMUTH_STEPS, endpoint=False))
    e, a = np.meshgrid(elev, azim, indexing="ij")
    return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)


_RAYS = _rays()


def _hit_box(origin: np.ndarray, dirs: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Distance along each ray to an oriented box (inf when missed): the slab method in its frame."""
    c, s = math.cos(box[6]), math.sin(box[6])
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])  # world → box frame
    o = rot @ (origin - box[:3])
    d = dirs @ rot.T
    half = box[3:6] / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o) / d
        t2 = (half - o) / d
    near = np.nanmax(np.minimum(t1, t2), axis=1)
    far = np.nanmin(np.maximum(t1, t2), axis=1)
    return np.where((far >= near) & (far > 0), np.maximum(near, 0), np.inf)


def _hit_cylinder(
    origin: np.ndarray, dirs: np.ndarray, cx: float, cy: float, r: float, z0: float, z1: float
) -> np.ndarray:
    ox, oy = origin[0] - cx, origin[1] - cy
    a = dirs[:, 0] ** 2 + dirs[:, 1] ** 2
    b = 2 * (ox * dirs[:, 0] + oy * dirs[:, 1])
    cc = ox**2 + oy**2 - r**2
    disc = b**2 - 4 * a * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    z = origin[2] + t * dirs[:, 2]
    ok = (disc >= 0) & (t > 0) & (z >= z0) & (z <= z1)
    return np.where(ok, t, np.inf)


def make_frame(seed: int) -> Frame:
    rng = np.random.default_rng(seed)
    origin = np.array([0.0, 0.0, 0.0])
    ground_z = -SENSOR_HEIGHT + rng.uniform(-0.1, 0.1)
    slope = rng.uniform(-0.01, 0.01, 2)
    dirs = _RAYS
    # Ground: z = ground_z + slope · (x, y)
    denom = dirs[:, 2] - dirs[:, 0] * slope[0] - dirs[:, 1] * slope[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(denom < -1e-6, ground_z / denom, np.inf)
    dist = t_ground.copy()
    hit_id = np.full(len(dirs), -1)
    objects: list[tuple[int, np.ndarray]] = []
    placed: list[tuple[float, float, float]] = []

    def free(x: float, y: float, r: float) -> bool:
        return all((x - px) ** 2 + (y - py) ** 2 > (r + pr + 0.5) ** 2 for px, py, pr in placed)

    for _ in range(rng.integers(3, 9)):
        cls = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
        x, y = rng.uniform(4, 38), rng.uniform(-17, 17)
        yaw = rng.uniform(-math.pi, math.pi)
        size: tuple[float, ...]
        if cls == 1:
            rad, h = rng.uniform(0.25, 0.35), rng.uniform(1.5, 1.9)
            size = (2 * rad, 2 * rad, h)
        else:
            size = tuple(v * rng.uniform(0.9, 1.1) for v in _SIZES[cls])
        radius = math.hypot(size[0], size[1]) / 2
        if not free(x, y, radius):
            continue
        placed.append((x, y, radius))
        z = ground_z + slope[0] * x + slope[1] * y + size[2] / 2
        box = np.array([x, y, z, *size, yaw if cls != 1 else 0.0])
        if cls == 1:
            t = _hit_cylinder(origin, dirs, x, y, size[0] / 2, z - size[2] / 2, z + size[2] / 2)
        else:
            t = _hit_box(origin, dirs, box)
        closer = t < dist
        dist, hit_id = np.where(closer, t, dist), np.where(closer, len(objects), hit_id)
        objects.append((cls, box))
    for _ in range(rng.integers(0, 5)):  # clutter: poles and low walls, never labelled
        x, y = rng.uniform(3, 38), rng.uniform(-18, 18)
        if rng.random() < 0.5:
            t = _hit_cylinder(origin, dirs, x, y, 0.08, ground_z, ground_z + 3.5)
        else:
            box = np.array([x, y, ground_z + 0.4, rng.uniform(2, 6), 0.3, 0.8, rng.uniform(-math.pi, math.pi)])
            t = _hit_box(origin, dirs, box)
        closer = t < dist
        dist, hit_id = np.where(closer, t, dist), np.where(closer, -2, hit_id)
    ok = dist < MAX_RANGE
    ranges = dist[ok] + rng.normal(0, 0.02, int(ok.sum()))
    pts = dirs[ok] * ranges[:, None]
    intensity = np.clip(rng.normal(0.3, 0.1, len(ranges)) + (hit_id[ok] >= 0) * 0.3, 0, 1)
    points = np.column_stack([pts, intensity]).astype(np.float32)
    counts = np.bincount(hit_id[ok][hit_id[ok] >= 0], minlength=len(objects))
    keep = [i for i in range(len(objects)) if counts[i] >= MIN_POINTS]
    boxes = np.array([objects[i][1] for i in keep], dtype=np.float32).reshape(-1, 7)
    labels = np.array([objects[i][0] for i in keep], dtype=np.int64)
    return Frame(points, boxes, labels)
