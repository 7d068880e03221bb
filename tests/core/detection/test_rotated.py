"""Rotated BEV and 3D IoU against shapely polygons, random and special cases; points per box."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ml_debugger.core.detection.rotated import bev_corners, iou_matrix, paired_iou, points_in_boxes

shapely = pytest.importorskip("shapely")


def _poly(box: torch.Tensor):  # type: ignore[no-untyped-def]
    from shapely.geometry import Polygon

    return Polygon(bev_corners(box).tolist())


def _reference(a: torch.Tensor, b: torch.Tensor, mode: str) -> float:
    pa, pb = _poly(a), _poly(b)
    inter = pa.intersection(pb).area
    if mode == "bev":
        union = pa.area + pb.area - inter
    else:
        az, ah, bz, bh = float(a[2]), float(a[5]), float(b[2]), float(b[5])
        h = max(0.0, min(az + ah / 2, bz + bh / 2) - max(az - ah / 2, bz - bh / 2))
        inter *= h
        union = pa.area * float(a[5]) + pb.area * float(b[5]) - inter
    return inter / union if union > 1e-9 else 0.0


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([6.0, 6.0, 1.0], dtype=torch.float64)
    size = torch.rand(n, 3, generator=g, dtype=torch.float64) * 4 + 0.2
    yaw = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    return torch.cat([xyz, size, yaw], 1)


@pytest.mark.parametrize("mode", ["bev", "3d"])
def test_random_pairs_match_shapely(mode: str) -> None:
    a, b = _random_boxes(600, 0), _random_boxes(600, 1)
    got = paired_iou(a, b, mode=mode)
    want = torch.tensor([_reference(x, y, mode) for x, y in zip(a, b, strict=True)], dtype=torch.float64)
    assert (got - want).abs().max() < 1e-6
    assert (want > 0).sum() > 100  # many real overlaps, not just zeros


def _box(x: float, y: float, dx: float, dy: float, yaw: float = 0.0, z: float = 0.0, dz: float = 1.0) -> list[float]:
    return [x, y, z, dx, dy, dz, yaw]


CASES = [
    (_box(0, 0, 2, 2), _box(0, 0, 2, 2)),  # identical
    (_box(0, 0, 2, 2), _box(2, 0, 2, 2)),  # touching along an edge
    (_box(0, 0, 2, 2), _box(2, 2, 2, 2)),  # touching at a corner
    (_box(0, 0, 4, 4), _box(0.5, 0.3, 1, 1, 0.7)),  # nested, rotated
    (_box(0, 0, 2, 2, math.pi / 4), _box(0, 0, 2, 2)),  # octagon
    (_box(0, 0, 2, 1), _box(0, 0, 2, 1, math.pi)),  # the same box turned around
    (_box(0, 0, 2, 2), _box(5, 5, 1, 1)),  # apart
    (_box(0, 0, 2, 2), _box(0, 0, 2, 2, z=1.0)),  # touching vertically: 3D IoU 0, BEV 1
    (_box(0, 0, 2, 0), _box(0, 0, 2, 2)),  # degenerate: no area
    (_box(0, 0, 3, 1), _box(0, 0, 3, 1, math.pi / 2)),  # a cross
    (_box(0, 0, 4, 4), _box(1, 0, 2, 4)),  # nested, sharing two edges
    (_box(0, 0, 4, 4), _box(-1, -1, 2, 2, math.pi / 2)),  # nested in a corner, turned a quarter
    (_box(0, 0, 2, 2), _box(1, 0, 2, 2)),  # edges on the same lines, half overlapping
    (_box(0, 0, 2, 2), _box(0, 1, 2, 2, math.pi)),  # the same, turned around
    (_box(0, 0, 4, 4, 0.3), _box(0, 0, 4, 4, 0.3 + math.pi / 2)),  # the same square, rotated
    (_box(1, 1, 0, 0), _box(0, 0, 4, 4)),  # a point inside
    (_box(0, 0, 2, 0), _box(0, 0, 2, 0)),  # two equal segments
]


@pytest.mark.parametrize(("a", "b"), CASES)
@pytest.mark.parametrize("mode", ["bev", "3d"])
def test_special_cases_match_shapely(a: list[float], b: list[float], mode: str) -> None:
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    got = float(paired_iou(ta, tb, mode=mode)[0])
    assert got == pytest.approx(_reference(ta[0], tb[0], mode), abs=1e-6)


# Scene coordinates: tens of metres from the sensor, where float32 keeps the fewest decimals.
_FAR = torch.tensor([41.3, -27.9, 0, 0, 0, 0, 0], dtype=torch.float64)


@pytest.mark.parametrize("mode", ["bev", "3d"])
def test_the_float32_path_is_within_1e_4_of_shapely(mode: str) -> None:
    """NMS takes the float32 path (``dtype=torch.float32``) on a detector's boxes."""
    a, b = _random_boxes(600, 0) + _FAR, _random_boxes(600, 1) + _FAR
    got = paired_iou(a, b, mode=mode, dtype=torch.float32)
    assert got.dtype == torch.float32
    want = torch.tensor([_reference(x, y, mode) for x, y in zip(a, b, strict=True)], dtype=torch.float64)
    assert (got.double() - want).abs().max() < 1e-4
    assert (got.double() - want).abs().max() > 0  # it is float32: not the float64 path by mistake


def _turned(box: list[float], angle: float) -> torch.Tensor:
    """``box`` with the whole scene turned by ``angle`` about the origin, then moved to ``_FAR``:
    shared edges stay shared, but no coordinate is a round number any more."""
    c, s = math.cos(angle), math.sin(angle)
    x, y = box[0] * c - box[1] * s, box[0] * s + box[1] * c
    return torch.tensor([[x, y, box[2], box[3], box[4], box[5], box[6] + angle]], dtype=torch.float64) + _FAR


@pytest.mark.parametrize(("a", "b"), CASES)
@pytest.mark.parametrize("mode", ["bev", "3d"])
@pytest.mark.parametrize("angle", [0.0, 0.3, 2.0])
def test_special_cases_on_the_float32_path(a: list[float], b: list[float], mode: str, angle: float) -> None:
    ta, tb = _turned(a, angle), _turned(b, angle)
    got = float(paired_iou(ta, tb, mode=mode, dtype=torch.float32)[0])
    assert got == pytest.approx(_reference(ta[0], tb[0], mode), abs=1e-4)


def test_matrix_equals_pairs() -> None:
    a, b = _random_boxes(13, 2), _random_boxes(7, 3)
    m = iou_matrix(a, b, mode="bev")
    assert m.shape == (13, 7)
    assert torch.allclose(m[4], paired_iou(a[4:5].expand(7, -1), b, mode="bev"))


def _scene_3d(seed: int) -> dict:
    """A 2D scene of the matching tests lifted to 3D: footprints from the xyxy boxes, one height range."""
    import numpy as np

    from tests.core.detection.test_matching import _scene

    s = _scene(np.random.default_rng(seed), 40, 0.0)

    def lift(b: np.ndarray) -> np.ndarray:
        c = (b[:, :2] + b[:, 2:]) / 2
        wh = b[:, 2:] - b[:, :2]
        n = len(b)
        return np.column_stack([c, np.zeros(n), wh, np.ones(n), np.zeros(n)])

    return {**s, "gb3": lift(s["gb"]), "pb3": lift(s["pb"])}


def test_3d_matching_of_upright_boxes_equals_2d_matching() -> None:
    from ml_debugger.core.detection.matching import codes, match
    from ml_debugger.core.detection.rotated import ROTATED_3D

    s = _scene_3d(5)
    m2 = match(s["pi"], s["pb"], s["pc"], s["ps"], s["gi"], s["gb"], s["gc"])
    m3 = match(s["pi"], s["pb3"], s["pc"], s["ps"], s["gi"], s["gb3"], s["gc"], geometry=ROTATED_3D)
    assert m2.tp.sum() > 30 and (m2.tp == m3.tp).all() and (m2.pred_gt == m3.pred_gt).all()
    c2 = codes(s["pi"], s["pb"], s["pc"], s["gi"], s["gb"], s["gc"], m2)
    c3 = codes(s["pi"], s["pb3"], s["pc"], s["gi"], s["gb3"], s["gc"], m3, geometry=ROTATED_3D)
    assert (c2.code == c3.code).all() and (c2.missed == c3.missed).all()


def test_3d_matching_does_not_depend_on_the_scene_heading() -> None:
    import numpy as np

    from ml_debugger.core.detection.matching import codes, match
    from ml_debugger.core.detection.rotated import ROTATED_3D

    s = _scene_3d(6)
    # Off the half-pixel grid, so no IoU sits exactly on a threshold (where rounding decides).
    rng = np.random.default_rng(0)
    for key in ("pb3", "gb3"):
        s[key][:, [0, 1, 3, 4]] += rng.uniform(-1e-3, 1e-3, (len(s[key]), 4))

    def turn(b: np.ndarray, angle: float) -> np.ndarray:
        c, si = np.cos(angle), np.sin(angle)
        out = b.copy()
        out[:, 0], out[:, 1] = c * b[:, 0] - si * b[:, 1], si * b[:, 0] + c * b[:, 1]
        out[:, 6] = b[:, 6] + angle
        return out

    base = match(s["pi"], s["pb3"], s["pc"], s["ps"], s["gi"], s["gb3"], s["gc"], geometry=ROTATED_3D)
    pb, gb = turn(s["pb3"], 0.7), turn(s["gb3"], 0.7)
    turned = match(s["pi"], pb, s["pc"], s["ps"], s["gi"], gb, s["gc"], geometry=ROTATED_3D)
    assert (base.tp == turned.tp).all()
    c = codes(s["pi"], pb, s["pc"], s["gi"], gb, s["gc"], turned, geometry=ROTATED_3D)
    c0 = codes(s["pi"], s["pb3"], s["pc"], s["gi"], s["gb3"], s["gc"], base, geometry=ROTATED_3D)
    assert (c.code == c0.code).all()


def _points_in_boxes_reference(points: np.ndarray, boxes: np.ndarray) -> list[int]:
    """One box at a time, in float64, every point."""
    counts = []
    for b in boxes.astype(np.float64):
        d = points[:, :3].astype(np.float64) - b[:3]
        c, s = math.cos(b[6]), math.sin(b[6])
        lx, ly = d[:, 0] * c + d[:, 1] * s, d[:, 1] * c - d[:, 0] * s
        counts.append(int(((abs(lx) <= b[3] / 2) & (abs(ly) <= b[4] / 2) & (abs(d[:, 2]) <= b[5] / 2)).sum()))
    return counts


@pytest.mark.parametrize("seed", range(4))
def test_points_in_boxes_equals_a_plain_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 20_000, 30
    points = np.column_stack([rng.uniform(-40, 40, (n, 2)), rng.uniform(-2, 3, n), rng.uniform(0, 1, n)])
    boxes = np.column_stack([rng.uniform(-40, 40, (k, 2)), rng.uniform(-1, 1, k), rng.uniform(0.2, 8, (k, 3)),
                             rng.uniform(-4, 4, k)])  # fmt: skip
    if seed == 3:  # one box very far away: too large a grid, so every point is tested
        boxes[0, :2] = 1e7
    points, boxes = points.astype(np.float32), boxes.astype(np.float32)
    points[:50, seed % 2] = [np.nan, np.inf, -np.inf, 1e30, -1e30] * 10  # off the grid, inside no box
    got = points_in_boxes(points, boxes).tolist()
    assert got == _points_in_boxes_reference(points, boxes)
    assert sum(got) > 100
    assert points_in_boxes(points[:0], boxes).tolist() == [0] * k
