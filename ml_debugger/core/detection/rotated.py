"""Rotated boxes for 3D detection: bird's-eye-view (BEV) IoU and 3D IoU, vectorised in torch.

A box is ``[x, y, z, dx, dy, dz, yaw]``: centre, size along its own axes, and rotation about
the vertical axis (radians, counter-clockwise from +x), as OpenPCDet and mmdetection3d store
LiDAR boxes. The BEV footprint is the rectangle of centre (x, y), size (dx, dy), angle yaw.

The intersection of two footprints is a convex polygon whose vertices are among: each
rectangle's corners inside the other, and the crossings of their edges (at most 4 + 4 + 16
candidates). For every pair at once we keep the valid candidates, sort them by angle around
their mean, and take the shoelace area: no Python loop over pairs. 3D IoU multiplies the BEV
intersection by the overlap of the vertical extents. Computed in float64; the tests compare
with shapely polygons to 1e-6, touching, nested and degenerate boxes included.
"""

from __future__ import annotations

import numpy as np
import torch

from ml_debugger.core.detection.boxes import Geometry

# Pairs per chunk: bounds memory (each pair holds 24 candidate points).
CHUNK = 1 << 17
_EPS = 1e-9


def bev_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 7]`` boxes → ``[..., 4, 2]`` footprint corners, counter-clockwise."""
    b = boxes.to(torch.float64)
    x, y, dx, dy, yaw = b[..., 0], b[..., 1], b[..., 3], b[..., 4], b[..., 6]
    c, s = torch.cos(yaw), torch.sin(yaw)
    hx, hy = dx / 2, dy / 2
    local = torch.stack(
        [
            torch.stack([hx, hy], -1),
            torch.stack([-hx, hy], -1),
            torch.stack([-hx, -hy], -1),
            torch.stack([hx, -hy], -1),
        ],
        -2,
    )
    rx = local[..., 0] * c[..., None] - local[..., 1] * s[..., None]
    ry = local[..., 0] * s[..., None] + local[..., 1] * c[..., None]
    return torch.stack([rx + x[..., None], ry + y[..., None]], -1)


def _inside(points: torch.Tensor, rect: torch.Tensor) -> torch.Tensor:
    """Whether each of ``points [P, K, 2]`` lies in the convex ``rect [P, 4, 2]`` (CCW; edges count)."""
    a = rect
    b = torch.roll(rect, -1, dims=1)
    edge = (b - a)[:, None, :, :]  # [P, 1, 4, 2]
    rel = points[:, :, None, :] - a[:, None, :, :]  # [P, K, 4, 2]
    cross = edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0]
    scale = edge.norm(dim=-1).clamp(min=_EPS)
    return (cross / scale >= -1e-9).all(-1)


def _crossings(r1: torch.Tensor, r2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersections of each edge of ``r1`` with each edge of ``r2``: points ``[P, 16, 2]``, valid ``[P, 16]``."""
    p, p2 = r1, torch.roll(r1, -1, dims=1)
    q, q2 = r2, torch.roll(r2, -1, dims=1)
    d1 = (p2 - p)[:, :, None, :]  # [P, 4, 1, 2]
    d2 = (q2 - q)[:, None, :, :]  # [P, 1, 4, 2]
    w = q[:, None, :, :] - p[:, :, None, :]  # [P, 4, 4, 2]
    denom = d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]
    ok = denom.abs() > _EPS
    safe = torch.where(ok, denom, torch.ones_like(denom))
    t = (w[..., 0] * d2[..., 1] - w[..., 1] * d2[..., 0]) / safe
    u = (w[..., 0] * d1[..., 1] - w[..., 1] * d1[..., 0]) / safe
    valid = ok & (t >= -1e-12) & (t <= 1 + 1e-12) & (u >= -1e-12) & (u <= 1 + 1e-12)
    pts = p[:, :, None, :] + t[..., None] * d1
    return pts.reshape(len(r1), 16, 2), valid.reshape(len(r1), 16)


def _polygon_area(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Area of the convex hull-ordered polygon of the valid ``points [P, K, 2]`` per row."""
    n = valid.sum(1)
    w = valid.to(points.dtype)
    centre = (points * w[..., None]).sum(1) / n.clamp(min=1)[:, None].to(points.dtype)
    rel = points - centre[:, None, :]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid points sort last
    order = angle.argsort(dim=1)
    pts = torch.gather(rel, 1, order[..., None].expand(-1, -1, 2))
    ok = torch.gather(valid, 1, order)
    # Invalid points take the first point's place: they add nothing to the shoelace sum.
    pts = torch.where(ok[..., None], pts, pts[:, :1, :])
    nxt = torch.roll(pts, -1, dims=1)
    area = 0.5 * (pts[..., 0] * nxt[..., 1] - pts[..., 1] * nxt[..., 0]).sum(1)
    return torch.where(n >= 3, area.abs(), torch.zeros_like(area))


def bev_intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """BEV intersection areas of paired boxes ``a [P, 7]`` and ``b [P, 7]``: ``[P]``.

    Pairs whose circumscribed circles, then axis-aligned extents, do not meet cannot overlap and
    are skipped (in a scene most pairs are far apart); the polygon work runs on the rest only."""
    out = torch.zeros(len(a), dtype=torch.float64)
    reach = (a[:, 3].hypot(a[:, 4]) + b[:, 3].hypot(b[:, 4])) / 2
    near = torch.nonzero((a[:, :2] - b[:, :2]).norm(dim=1) <= reach + _EPS).reshape(-1)
    for start in range(0, len(near), CHUNK):
        idx = near[start : start + CHUNK]
        ra, rb = bev_corners(a[idx]), bev_corners(b[idx])
        # Footprints whose axis-aligned extents do not meet cannot overlap either (tighter than
        # the circles for long, turned boxes).
        meet = ((ra.amin(1) <= rb.amax(1) + _EPS) & (rb.amin(1) <= ra.amax(1) + _EPS)).all(1)
        idx, ra, rb = idx[meet], ra[meet], rb[meet]
        cross, cross_ok = _crossings(ra, rb)
        pts = torch.cat([ra, rb, cross], 1)
        ok = torch.cat([_inside(ra, rb), _inside(rb, ra), cross_ok], 1)
        out[idx] = _polygon_area(pts, ok)
    return out


def paired_iou(a: torch.Tensor, b: torch.Tensor, *, mode: str = "3d") -> torch.Tensor:
    """IoU of paired boxes ``a [P, 7]``, ``b [P, 7]``: ``"bev"`` (footprints) or ``"3d"``."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    inter = bev_intersection(a64, b64)
    area_a = (a64[:, 3] * a64[:, 4]).clamp(min=0)
    area_b = (b64[:, 3] * b64[:, 4]).clamp(min=0)
    if mode == "bev":
        union = area_a + area_b - inter
    elif mode == "3d":
        top = torch.minimum(a64[:, 2] + a64[:, 5] / 2, b64[:, 2] + b64[:, 5] / 2)
        bottom = torch.maximum(a64[:, 2] - a64[:, 5] / 2, b64[:, 2] - b64[:, 5] / 2)
        inter = inter * (top - bottom).clamp(min=0)
        union = area_a * a64[:, 5].clamp(min=0) + area_b * b64[:, 5].clamp(min=0) - inter
    else:
        raise ValueError(f"mode must be 'bev' or '3d', not {mode!r}")
    return torch.where(union > _EPS, inter / union.clamp(min=_EPS), torch.zeros_like(inter))


def iou_matrix(a: torch.Tensor, b: torch.Tensor, *, mode: str = "3d") -> torch.Tensor:
    """IoU of every box of ``a [N, 7]`` with every box of ``b [M, 7]``: ``[N, M]``."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return torch.zeros(n, m, dtype=torch.float64)
    ia = torch.arange(n).repeat_interleave(m)
    ib = torch.arange(m).repeat(n)
    return paired_iou(a[ia], b[ib], mode=mode).reshape(n, m)


def self_iou(groups: list[torch.Tensor], *, mode: str = "bev",
             same_class: list[torch.Tensor] | None = None) -> list[torch.Tensor]:  # fmt: skip
    """The pairwise IoU matrix ``[n_i, n_i]`` of each group of boxes (e.g. each frame's
    candidates), all groups' pairs (i < j) computed in one ``paired_iou`` call; the diagonal is 1.
    With ``same_class`` (one label vector per group), pairs of different labels are left at 0."""
    sizes = [len(g) for g in groups]
    tri = [torch.triu_indices(n, n, 1) for n in sizes]
    if same_class is not None:
        tri = [t[:, c[t[0]] == c[t[1]]] for t, c in zip(tri, same_class, strict=True)]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist() if sizes else []
    if sum(t.shape[1] for t in tri):
        flat = torch.cat(list(groups))
        ia = torch.cat([t[0] + o for t, o in zip(tri, offsets, strict=True)])
        ib = torch.cat([t[1] + o for t, o in zip(tri, offsets, strict=True)])
        values = paired_iou(flat[ia], flat[ib], mode=mode)
    else:
        values = torch.zeros(0, dtype=torch.float64)
    out, start = [], 0
    for n, t in zip(sizes, tri, strict=True):
        m = torch.zeros(n, n, dtype=torch.float64)
        stop = start + t.shape[1]
        m[t[0], t[1]] = values[start:stop]
        out.append(m + m.T + torch.eye(n, dtype=torch.float64))
        start = stop
    return out


def _pairwise(mode: str):  # type: ignore[no-untyped-def]
    def intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``[..., N, 7] × [..., M, 7] → [..., N, M]`` intersection areas (bev) or volumes (3d)."""
        ta = torch.from_numpy(np.asarray(a, dtype=np.float64))
        tb = torch.from_numpy(np.asarray(b, dtype=np.float64))
        lead = torch.broadcast_shapes(ta.shape[:-2], tb.shape[:-2])
        n, m = ta.shape[-2], tb.shape[-2]
        pa = ta[..., :, None, :].expand(*lead, n, m, 7).reshape(-1, 7)
        pb = tb[..., None, :, :].expand(*lead, n, m, 7).reshape(-1, 7)
        inter = bev_intersection(pa, pb)
        if mode == "3d":
            top = torch.minimum(pa[:, 2] + pa[:, 5] / 2, pb[:, 2] + pb[:, 5] / 2)
            bottom = torch.maximum(pa[:, 2] - pa[:, 5] / 2, pb[:, 2] - pb[:, 5] / 2)
            inter = inter * (top - bottom).clamp(min=0)
        return inter.reshape(*lead, n, m).numpy()

    def size(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        s = np.clip(a[..., 3], 0, None) * np.clip(a[..., 4], 0, None)
        return s * np.clip(a[..., 5], 0, None) if mode == "3d" else s

    return intersection, size


ROTATED_BEV = Geometry("bev", 7, *_pairwise("bev"))
ROTATED_3D = Geometry("3d", 7, *_pairwise("3d"))


def points_in_boxes(points: torch.Tensor | np.ndarray, boxes: torch.Tensor | np.ndarray) -> torch.Tensor:
    """How many of ``points [N, 3+]`` lie inside each box of ``boxes [K, 7]`` (faces count): ``[K]``.

    Points go into each box's own frame (translate, rotate by −yaw), in float32 and one
    coordinate at a time (no ``[K, N, 3]`` temporary), in NumPy: for one frame's few boxes it
    runs about 3× faster than the same expressions in torch. Chunks of boxes bound memory."""
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    b = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    out = np.zeros(len(b), dtype=np.int64)
    if len(p) == 0 or len(b) == 0:
        return torch.from_numpy(out)
    px, py, pz = (p[None, :, i].astype(np.float32, copy=False) for i in range(3))
    b = b.astype(np.float32, copy=False)
    step = max(1, (1 << 22) // len(p))
    for start in range(0, len(b), step):
        bb = b[start : start + step]
        c, s = np.cos(bb[:, 6:7]), np.sin(bb[:, 6:7])
        dx, dy = px - bb[:, 0:1], py - bb[:, 1:2]
        inside = np.abs(dx * c + dy * s) <= bb[:, 3:4] / 2
        inside &= np.abs(dy * c - dx * s) <= bb[:, 4:5] / 2
        inside &= np.abs(pz - bb[:, 2:3]) <= bb[:, 5:6] / 2
        out[start : start + step] = inside.sum(1)
    return torch.from_numpy(out)


def corners_3d(boxes: np.ndarray) -> np.ndarray:
    """``[K, 7]`` boxes → ``[K, 8, 3]`` corners: the footprint at the bottom, then at the top."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    foot = bev_corners(torch.from_numpy(b)).numpy()
    z = np.stack([b[:, 2] - b[:, 5] / 2, b[:, 2] + b[:, 5] / 2], 1)  # [K, 2]
    bottom = np.concatenate([foot, np.repeat(z[:, :1, None], 4, 1)], 2)
    top = np.concatenate([foot, np.repeat(z[:, 1:, None], 4, 1)], 2)
    return np.concatenate([bottom, top], 1)


def bev_extent(boxes: np.ndarray) -> np.ndarray:
    """``[K, 7]`` boxes → ``[K, 4]`` x1, y1, x2, y2 of their footprints' axis-aligned extent."""
    corners = bev_corners(torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(-1, 7))).numpy()
    return np.concatenate([corners.min(1), corners.max(1)], 1)
