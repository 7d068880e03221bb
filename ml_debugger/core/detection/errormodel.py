"""Per-box signals and the box-level kNN bank of the detection error model.

Signals of a kept box (MetaDetect-style, plus the box's feature vector through its neighbours):

- score: ``score_logit`` (logit of the class probability), ``entropy`` of the class
  distribution, ``margin`` between the two best classes;
- geometry: ``log_rel_area`` (box area over image area), ``log_aspect`` (|log w/h|), ``border``
  (distance to the nearest image edge over the shorter side; 0 = touching);
- overlap: ``log_candidates`` (log 1 + candidates of its class it overlaps above the NMS IoU),
  ``candidate_iou`` (their mean IoU), ``max_iou_other`` (largest IoU with another kept box);
- 3D boxes replace the geometry with ``log_range`` (BEV distance to the sensor), ``log_points``
  (log 1 + the frame's points inside the box: sparse boxes are guesses), ``log_volume``,
  ``log_aspect`` (|log dx/dy|) and ``z`` (the box centre's height);
- neighbours in feature space, among the labelled run's boxes of *other* images:
  ``knn_error`` (share of the k nearest that were errors), ``knn_cls_disagree`` (share of those
  with a ground truth whose class differs from this box's label), ``knn_distance`` (the k-th
  distance; its percentile among the bank's own is the ``ood_score``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from ml_debugger.core.neighbors import _distance, normalize, ood_percentile

SIGNALS = (
    "score_logit",
    "entropy",
    "margin",
    "log_rel_area",
    "log_aspect",
    "border",
    "log_candidates",
    "candidate_iou",
    "max_iou_other",
    "knn_error",
    "knn_cls_disagree",
    "knn_distance",
)
SIGNALS_3D = (
    "score_logit",
    "entropy",
    "margin",
    "log_range",
    "log_points",
    "log_volume",
    "log_aspect",
    "z",
    "log_candidates",
    "candidate_iou",
    "max_iou_other",
    "knn_error",
    "knn_cls_disagree",
    "knn_distance",
)
_CLIP = 1e-6
# Similarity entries per block of the chunked search (bounds memory, as in core.neighbors).
_BLOCK = 1 << 24


def box_signals(boxes: pl.DataFrame) -> pl.DataFrame:
    """The score, geometry and overlap signals of ``Store.read_boxes`` rows (Polars)."""
    s = pl.col("score").clip(_CLIP, 1 - _CLIP)
    w = (pl.col("x2") - pl.col("x1")).clip(1e-3, None)
    h = (pl.col("y2") - pl.col("y1")).clip(1e-3, None)
    W, H = pl.col("width").cast(pl.Float64), pl.col("height").cast(pl.Float64)
    border = pl.min_horizontal(pl.col("x1"), pl.col("y1"), W - pl.col("x2"), H - pl.col("y2")).clip(0, None)
    return boxes.with_columns(
        (s / (1 - s)).log().alias("score_logit"),
        (w * h / (W * H)).log().alias("log_rel_area"),
        (w / h).log().abs().alias("log_aspect"),
        (border / pl.min_horizontal(W, H)).alias("border"),
        pl.col("n_candidates").cast(pl.Float64).log1p().alias("log_candidates"),
    )


def box_signals_3d(boxes: pl.DataFrame) -> pl.DataFrame:
    """The score, geometry, point and overlap signals of 3D ``Store.read_boxes`` rows."""
    s = pl.col("score").clip(_CLIP, 1 - _CLIP)
    dx, dy, dz = (pl.col(c).cast(pl.Float64).clip(1e-3, None) for c in ("dx", "dy", "dz"))
    return boxes.with_columns(
        (s / (1 - s)).log().alias("score_logit"),
        (pl.col("x").cast(pl.Float64) ** 2 + pl.col("y").cast(pl.Float64) ** 2)
        .sqrt()
        .clip(0.1, None)
        .log()
        .alias("log_range"),
        pl.col("n_points").cast(pl.Float64).fill_null(0).log1p().alias("log_points"),
        (dx * dy * dz).log().alias("log_volume"),
        (dx / dy).log().abs().alias("log_aspect"),
        pl.col("n_candidates").cast(pl.Float64).log1p().alias("log_candidates"),
    )


def signals_of(task: str) -> tuple[tuple[str, ...], Callable[[pl.DataFrame], pl.DataFrame]]:
    """The signal names and the function computing them, for ``detection`` or ``detection3d``."""
    return (SIGNALS_3D, box_signals_3d) if task == "detection3d" else (SIGNALS, box_signals)


@dataclass(frozen=True)
class BoxBank:
    """The labelled run's boxes as kNN references: unit features, image ids, whether each box
    was an error, the class of its ground truth (-1: none), k, and its own sorted distances."""

    features: torch.Tensor
    image: torch.Tensor
    is_error: torch.Tensor
    true_cls: torch.Tensor
    k: int
    self_distances: torch.Tensor


def build_box_bank(
    features: np.ndarray, image: np.ndarray, is_error: np.ndarray, true_cls: np.ndarray, pred: np.ndarray, *, k: int
) -> tuple[BoxBank, dict[str, np.ndarray]]:
    """The bank and its own leave-one-image-out signals (no box sees a neighbour from its image)."""
    feats = normalize(features)
    img = torch.from_numpy(np.asarray(image, dtype=np.int64))
    bank = BoxBank(
        feats,
        img,
        torch.from_numpy(np.asarray(is_error, dtype=bool)),
        torch.from_numpy(np.asarray(true_cls, dtype=np.int64)),
        max(1, min(k, len(feats) - 1)),
        torch.zeros(0),
    )
    raw = _search(feats, bank, query_image=img)
    bank = BoxBank(bank.features, img, bank.is_error, bank.true_cls, bank.k, torch.sort(raw["knn_distance"]).values)
    return bank, _signals(raw, pred, bank)


def box_knn(features: np.ndarray, pred: np.ndarray, bank: BoxBank) -> dict[str, np.ndarray]:
    """kNN signals of boxes of another run against the bank."""
    return _signals(_search(normalize(features), bank, query_image=None), pred, bank)


def _search(queries: torch.Tensor, bank: BoxBank, *, query_image: torch.Tensor | None) -> dict[str, torch.Tensor]:
    m, n = queries.shape[0], bank.features.shape[0]
    k = bank.k
    idx = torch.empty(m, k, dtype=torch.long)
    kth = torch.empty(m)
    chunk = max(16, _BLOCK // max(1, n))
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        sims = queries[start:stop] @ bank.features.T
        if query_image is not None:
            sims[query_image[start:stop, None] == bank.image[None, :]] = -3.0
        top = sims.topk(min(k, n), dim=1)
        idx[start:stop] = top.indices
        kth[start:stop] = top.values[:, -1]
    return {"neighbors": idx, "knn_distance": _distance(kth)}


def _signals(raw: dict[str, torch.Tensor], pred: np.ndarray, bank: BoxBank) -> dict[str, np.ndarray]:
    nb = raw["neighbors"]
    p = torch.from_numpy(np.asarray(pred, dtype=np.int64))
    err = bank.is_error[nb].float().mean(1)
    tc = bank.true_cls[nb]
    has = tc >= 0
    disagree = ((tc != p[:, None]) & has).float().sum(1) / has.float().sum(1).clamp(min=1)
    disagree = torch.where(has.any(1), disagree, torch.full_like(disagree, 0.5))
    dist = raw["knn_distance"]
    ood = ood_percentile(dist, bank.self_distances) if len(bank.self_distances) else torch.zeros_like(dist)
    return {
        "knn_error": err.numpy(),
        "knn_cls_disagree": disagree.numpy(),
        "knn_distance": dist.numpy(),
        "ood_score": ood.numpy(),
    }
