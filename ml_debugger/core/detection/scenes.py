"""Procedural detection scenes: coloured shapes of a few classes on textured backgrounds.

This data is **procedural**, not photographs: it exists so that tests and ``mldbg demo --task
detection`` run a real detector with real mistakes, offline and in seconds. Each scene is seeded
(the same seed gives the same pixels): a textured background (noise, stripes or a checkerboard),
clutter that is not an object (lines and dots), and one to four objects (circle, square,
triangle) that may occlude each other. An object hidden for more than 70% by later ones is not
labelled. Boxes are the objects' full extent, ``[x1, y1, x2, y2]`` in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("circle", "square", "triangle")
SIZE = 64
# An object must keep this share of its pixels visible to be labelled.
MIN_VISIBLE = 0.3


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # [SIZE, SIZE, 3] uint8
    boxes: np.ndarray  # [K, 4] float32, xyxy pixels
    labels: np.ndarray  # [K] int64


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = rng.uniform(40, 200, 3)
    kind = rng.integers(0, 3)
    if kind == 0:
        tex = rng.normal(0, 18, (SIZE, SIZE, 1))
    elif kind == 1:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8)
        tex = (25 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy)))[..., None]
    else:
        cell = rng.integers(4, 12)
        tex = (((xx // cell + yy // cell) % 2) * 30 - 15)[..., None]
    return base + tex


def _mask(cls: int, cx: float, cy: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    if cls == 0:
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    if cls == 1:
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    # An upward triangle: below the two slanted edges, above the base.
    return (yy <= cy + r) & (yy >= cy - r + 2 * np.abs(xx - cx))


def make_scene(seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    img = _background(rng, yy, xx)
    for _ in range(rng.integers(0, 4)):  # clutter: lines and dots that are not objects
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            x0, y0, x1, y1 = rng.uniform(0, SIZE, 4)
            dist = np.abs((y1 - y0) * xx - (x1 - x0) * yy + x1 * y0 - y1 * x0) / max(np.hypot(x1 - x0, y1 - y0), 1)
            img[dist <= 0.8] = colour
        else:
            cx, cy = rng.uniform(0, SIZE, 2)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 <= rng.uniform(1, 3) ** 2] = colour
    objects = []
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(0, len(CLASSES)))
        r = rng.uniform(5, 13)
        cx, cy = rng.uniform(r, SIZE - r, 2)
        mask = _mask(cls, cx, cy, r, yy, xx)
        img[mask] = rng.uniform(0, 255, 3)
        objects.append((cls, mask))
    img += rng.normal(0, 6, img.shape)
    boxes, labels = [], []
    covered = np.zeros((SIZE, SIZE), dtype=bool)
    for cls, mask in reversed(objects):  # later objects are on top
        visible = mask & ~covered
        covered |= mask
        if mask.sum() == 0 or visible.sum() / mask.sum() < MIN_VISIBLE:
            continue
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(cls)
    return Scene(
        np.clip(img, 0, 255).astype(np.uint8),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )
