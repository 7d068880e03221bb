"""COCO average precision from our own matching: AP per class at one IoU, mAP@0.5 and
mAP@[.5:.95] (101-point interpolated precision, as ``COCOeval.accumulate``; tests compare)."""

from __future__ import annotations

import numpy as np

from ml_debugger.core.detection.boxes import AXIS_ALIGNED, Geometry
from ml_debugger.core.detection.matching import match

IOUS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())
_RECALLS = np.linspace(0.0, 1.0, 101)


def average_precision(
    pred_img: np.ndarray,
    pred_box: np.ndarray,
    pred_cls: np.ndarray,
    pred_score: np.ndarray,
    gt_img: np.ndarray,
    gt_box: np.ndarray,
    gt_cls: np.ndarray,
    gt_crowd: np.ndarray | None = None,
    *,
    iou_threshold: float = 0.5,
    geometry: Geometry = AXIS_ALIGNED,
) -> dict[int, float]:
    """AP of every class that has ordinary ground truth, at one IoU threshold."""
    crowd = np.zeros(len(gt_cls), dtype=bool) if gt_crowd is None else np.asarray(gt_crowd, dtype=bool)
    m = match(pred_img, pred_box, pred_cls, pred_score, gt_img, gt_box, gt_cls, crowd, iou_threshold=iou_threshold,
              geometry=geometry)  # fmt: skip
    out = {}
    pred_cls, gt_cls = np.asarray(pred_cls), np.asarray(gt_cls)
    score = np.asarray(pred_score, dtype=np.float64)
    for c in np.unique(gt_cls[~crowd]):
        n_gt = int(((gt_cls == c) & ~crowd).sum())
        sel = np.flatnonzero((pred_cls == c) & ~m.ignored)
        order = sel[np.argsort(-score[sel], kind="mergesort")]
        tp = np.cumsum(m.tp[order])
        fp = np.cumsum(~m.tp[order])
        recall = tp / n_gt
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        at = np.searchsorted(recall, _RECALLS, side="left")
        q = np.where(at < len(precision), precision[np.minimum(at, max(len(precision) - 1, 0))], 0.0)
        out[int(c)] = float(q.mean()) if len(precision) else 0.0
    return out


def mean_ap(
    pred_img: np.ndarray,
    pred_box: np.ndarray,
    pred_cls: np.ndarray,
    pred_score: np.ndarray,
    gt_img: np.ndarray,
    gt_box: np.ndarray,
    gt_cls: np.ndarray,
    gt_crowd: np.ndarray | None = None,
    *,
    geometry: Geometry = AXIS_ALIGNED,
) -> dict[str, float | None]:
    """``{"map50": …, "map": …}``: mean AP over classes at IoU 0.5, and averaged over 0.5:0.95
    (IoU of ``geometry``: pixels, or rotated BEV / 3D boxes)."""
    args = (pred_img, pred_box, pred_cls, pred_score, gt_img, gt_box, gt_cls, gt_crowd)
    per_iou = [average_precision(*args, iou_threshold=t, geometry=geometry) for t in IOUS]
    if not per_iou[0]:
        return {"map50": None, "map": None}
    return {
        "map50": float(np.mean(list(per_iou[0].values()))),
        "map": float(np.mean([np.mean(list(ap.values())) for ap in per_iou])),
    }
