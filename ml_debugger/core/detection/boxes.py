"""Axis-aligned boxes as ``[x1, y1, x2, y2]`` arrays (pixels): pairwise IoU, batched per image.

The IoU follows COCO's convention (areas without the +1 of older VOC code), so our matching
gives the same decisions as ``pycocotools``. Crowd regions use COCO's crowd IoU: the
intersection over the prediction's own area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def area(b: np.ndarray) -> np.ndarray:
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return np.maximum(w, 0) * np.maximum(h, 0)


def intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of ``a [..., N, 4]`` and ``b [..., M, 4]``: ``[..., N, M]``."""
    w = np.minimum(a[..., :, None, 2], b[..., None, :, 2])
    w -= np.maximum(a[..., :, None, 0], b[..., None, :, 0])
    np.maximum(w, 0, out=w)
    h = np.minimum(a[..., :, None, 3], b[..., None, :, 3])
    h -= np.maximum(a[..., :, None, 1], b[..., None, :, 1])
    np.maximum(h, 0, out=h)
    w *= h
    return w


def iou(
    a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None, *, inter: np.ndarray | None = None
) -> np.ndarray:
    """Pairwise IoU ``[..., N, M]`` of xyxy boxes; where ``crowd [..., M]`` is true, intersection
    over ``a``'s area. ``inter`` reuses intersections computed already."""
    return AXIS_ALIGNED.iou(a, b, crowd, inter=inter)


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., 2:4] - b[..., :2]], axis=-1)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


@dataclass(frozen=True)
class Geometry:
    """How boxes of one kind overlap: their width in numbers (``dim``), pairwise intersection
    ``[..., N, dim] × [..., M, dim] → [..., N, M]`` and size (area or volume). Matching and the
    codes take one, so 2D and 3D share them."""

    name: str
    dim: int
    intersection: Callable[[np.ndarray, np.ndarray], np.ndarray]
    size: Callable[[np.ndarray], np.ndarray]

    def iou(self, a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None, *,
            inter: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """Pairwise IoU; where ``crowd`` is true, intersection over ``a``'s size (COCO's crowd rule)."""
        if inter is None:
            inter = self.intersection(a, b)
        size_a = self.size(a)[..., :, None]
        union = size_a + self.size(b)[..., None, :] - inter
        if crowd is not None:
            union = np.where(crowd[..., None, :], size_a, union)
        positive = union > 0
        return np.where(positive, inter / np.where(positive, union, 1.0), 0.0)


AXIS_ALIGNED = Geometry("xyxy", 4, intersection, area)
