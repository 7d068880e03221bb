"""Predictions matched to ground truth as COCO does, then a code for every box.

Matching (``match``) is COCOeval's greedy rule, per image and class: predictions in order of
score (ties: input order), each takes the unmatched ground truth of its class with the highest
IoU ≥ the threshold (ties: the later one); crowd regions are tried only when no ordinary ground
truth qualifies, may be matched many times, and a prediction matched to one is *ignored*
(neither right nor wrong). The tests check our true/false-positive decisions equal
``pycocotools``' on the same boxes.

It runs on all images of a chunk at once: boxes are padded to ``[images, boxes, 4]`` and the
greedy loop walks the score ranks (at most the largest number of predictions in one image), each
step vectorised over every image.

Codes (``codes``), after TIDE: ``A`` aligned (IoU ≥ the threshold with a ground truth; a true
positive, or a class confusion when that ground truth has another class), ``D`` duplicate (its
ground truth of the same class already taken by a higher-scoring box), ``SG`` one prediction
over several ground truths (each at least half covered), ``SP`` one ground truth split (this box
lies mostly inside a ground truth that holds two or more predictions), ``M`` matched but poorly
localised (background threshold ≤ IoU < threshold), ``ON`` no ground truth but overlapping
other predictions, ``N`` nothing at all; ``IG`` matched a crowd region; and ``NP`` for each
ordinary ground truth no true positive took.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml_debugger.core.detection.boxes import AXIS_ALIGNED, Geometry

IOU_THRESHOLD = 0.5  # a prediction is aligned with a ground truth at or above this IoU
BACKGROUND_IOU = 0.1  # below this IoU with every ground truth, a prediction is background
CHUNK_IMAGES = 2048  # images matched at once (bounds the padded IoU tensors)

CODES = ("A", "M", "SP", "SG", "D", "ON", "N", "IG")


@dataclass(frozen=True)
class Matches:
    """Per prediction: the matched ground truth (-1: none), true positive, ignored (crowd);
    per ground truth: matched by a true positive."""

    pred_gt: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    gt_matched: np.ndarray


def _slots(image: np.ndarray, keys: tuple[np.ndarray, ...], n_images: int) -> np.ndarray:
    """``[n_images, K]`` flat indices of each image's items in ``keys`` order (-1: padding)."""
    order = np.lexsort((*keys[::-1], image)) if len(image) else np.zeros(0, dtype=np.int64)
    counts = np.bincount(image, minlength=n_images)
    width = int(counts.max(initial=0))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    img_sorted = image[order]
    pos = np.arange(len(order)) - starts[img_sorted]
    slots = np.full((n_images, max(width, 1)), -1, dtype=np.int64)
    slots[img_sorted, pos] = order
    return slots


def _gather(values: np.ndarray, slots: np.ndarray, fill: float | int | bool) -> np.ndarray:
    out = values[np.clip(slots, 0, None)] if len(values) else np.zeros((*slots.shape, *values.shape[1:]))
    mask = slots < 0
    if out.ndim > mask.ndim:
        mask = mask[..., None]
    return np.where(mask, fill, out)


def _last_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the maximum along the last axis, the last one among ties."""
    return values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)


def _image_index(pred_img: np.ndarray, gt_img: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Image ids of any kind → dense 0..n-1 shared by predictions and ground truths."""
    ids, inverse = np.unique(np.concatenate([pred_img, gt_img]), return_inverse=True)
    return inverse[: len(pred_img)], inverse[len(pred_img) :], len(ids)


def match(
    pred_img: np.ndarray,
    pred_box: np.ndarray,
    pred_cls: np.ndarray,
    pred_score: np.ndarray,
    gt_img: np.ndarray,
    gt_box: np.ndarray,
    gt_cls: np.ndarray,
    gt_crowd: np.ndarray | None = None,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    chunk: int = CHUNK_IMAGES,
    geometry: Geometry = AXIS_ALIGNED,
) -> Matches:
    """COCO's greedy matching of predictions (``[P]`` image ids, ``[P, 4]`` xyxy boxes, classes,
    scores) to ground truth (``[G]`` image ids, boxes, classes, optional crowd flags). 3D boxes
    ``[P, 7]`` match the same way with ``geometry=ROTATED_3D`` (``core.detection.rotated``)."""
    pred_box = np.asarray(pred_box, dtype=np.float64).reshape(-1, geometry.dim)
    gt_box = np.asarray(gt_box, dtype=np.float64).reshape(-1, geometry.dim)
    n_pred, n_gt = len(pred_box), len(gt_box)
    crowd = np.zeros(n_gt, dtype=bool) if gt_crowd is None else np.asarray(gt_crowd, dtype=bool)
    p_img, g_img, n_images = _image_index(np.asarray(pred_img), np.asarray(gt_img))
    pred_gt = np.full(n_pred, -1, dtype=np.int64)
    gt_matched = np.zeros(n_gt, dtype=bool)
    thr = min(iou_threshold, 1 - 1e-10)  # as COCOeval
    score = np.asarray(pred_score, dtype=np.float64)
    for lo in range(0, n_images, chunk):
        hi = min(n_images, lo + chunk)
        p_sel = np.flatnonzero((p_img >= lo) & (p_img < hi))
        g_sel = np.flatnonzero((g_img >= lo) & (g_img < hi))
        if not len(p_sel):
            continue
        ps = _slots(p_img[p_sel] - lo, (-score[p_sel], p_sel), hi - lo)
        gs = _slots(g_img[g_sel] - lo, (crowd[g_sel].astype(np.int8), g_sel), hi - lo)
        ps = np.where(ps >= 0, p_sel[np.clip(ps, 0, None)], -1)
        gs = np.where(gs >= 0, g_sel[np.clip(gs, 0, None)], -1) if len(g_sel) else np.full((hi - lo, 1), -1)
        g_crowd = _gather(crowd, gs, False)
        ious = geometry.iou(_gather(pred_box, ps, 0.0), _gather(gt_box, gs, 0.0), g_crowd)
        same = _gather(np.asarray(pred_cls), ps, -1)[:, :, None] == _gather(np.asarray(gt_cls), gs, -2)[:, None, :]
        ious = np.where(same & (gs >= 0)[:, None, :], ious, -1.0)
        taken = np.zeros(gs.shape, dtype=bool)
        rows = np.arange(hi - lo)
        for d in range(ps.shape[1]):
            live = ps[:, d] >= 0
            cand = (ious[:, d, :] >= thr) & ~(taken & ~g_crowd)
            plain = cand & ~g_crowd
            for pool, is_crowd in ((plain, False), (cand & g_crowd, True)):
                has = pool.any(1) & live
                if is_crowd:
                    has &= ~plain.any(1)
                best = _last_argmax(np.where(pool, ious[:, d, :], -np.inf))
                r, b = rows[has], best[has]
                pred_gt[ps[r, d]] = gs[r, b]
                if not is_crowd:
                    taken[r, b] = True
        gt_matched[gs[taken]] = True
    ignored = (pred_gt >= 0) & crowd[np.clip(pred_gt, 0, None)] if n_gt else np.zeros(n_pred, dtype=bool)
    tp = (pred_gt >= 0) & ~ignored
    return Matches(pred_gt, tp, ignored, gt_matched)


@dataclass(frozen=True)
class BoxCodes:
    """Per prediction: its code (one of ``CODES``) and the ground truth it is about (-1: none);
    per ground truth: missed (``NP``: ordinary, not taken by a true positive)."""

    code: np.ndarray
    gt: np.ndarray
    missed: np.ndarray


def codes(
    pred_img: np.ndarray,
    pred_box: np.ndarray,
    pred_cls: np.ndarray,
    gt_img: np.ndarray,
    gt_box: np.ndarray,
    gt_cls: np.ndarray,
    matches: Matches,
    gt_crowd: np.ndarray | None = None,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    background_iou: float = BACKGROUND_IOU,
    chunk: int = CHUNK_IMAGES,
    geometry: Geometry = AXIS_ALIGNED,
) -> BoxCodes:
    """The code of every prediction and the missed ground truths, given ``match``'s result."""
    pred_box = np.asarray(pred_box, dtype=np.float64).reshape(-1, geometry.dim)
    gt_box = np.asarray(gt_box, dtype=np.float64).reshape(-1, geometry.dim)
    n_pred, n_gt = len(pred_box), len(gt_box)
    crowd = np.zeros(n_gt, dtype=bool) if gt_crowd is None else np.asarray(gt_crowd, dtype=bool)
    pred_cls = np.asarray(pred_cls)
    gt_cls = np.asarray(gt_cls)
    code = np.full(n_pred, CODES.index("N"), dtype=np.int8)
    about = np.full(n_pred, -1, dtype=np.int64)
    p_img, g_img, n_images = _image_index(np.asarray(pred_img), np.asarray(gt_img))
    plain = np.flatnonzero(~crowd)
    for lo in range(0, n_images, chunk):
        hi = min(n_images, lo + chunk)
        p_sel = np.flatnonzero((p_img >= lo) & (p_img < hi))
        if not len(p_sel):
            continue
        g_sel = plain[(g_img[plain] >= lo) & (g_img[plain] < hi)]
        ps = _slots(p_img[p_sel] - lo, (p_sel,), hi - lo)
        ps = np.where(ps >= 0, p_sel[np.clip(ps, 0, None)], -1)
        gs = _slots(g_img[g_sel] - lo, (g_sel,), hi - lo) if len(g_sel) else np.full((hi - lo, 1), -1)
        gs = np.where(gs >= 0, g_sel[np.clip(gs, 0, None)], -1) if len(g_sel) else gs
        pb, gb = _gather(pred_box, ps, 0.0), _gather(gt_box, gs, 0.0)
        pv, gv = ps >= 0, gs >= 0
        inter = geometry.intersection(pb, gb)
        agn = np.where(gv[:, None, :], geometry.iou(pb, gb, inter=inter), -1.0)  # class-agnostic, ordinary truths
        cover_gt = np.where(gv[:, None, :], inter / np.maximum(geometry.size(gb)[:, None, :], 1e-12), 0.0)
        inside = np.where(gv[:, None, :], inter / np.maximum(geometry.size(pb)[:, :, None], 1e-12), 0.0) >= 0.5
        inside &= pv[:, :, None]
        best = _last_argmax(agn)
        best_iou = np.take_along_axis(agn, best[..., None], -1)[..., 0]
        best_gt = np.take_along_axis(gs, best, -1)
        best_cls = _gather(gt_cls, best_gt, -1)
        my_cls = _gather(pred_cls, ps, -1)
        n_covered = (cover_gt >= 0.5).sum(-1)
        # SP: the ground truth this box lies most inside, when it holds two or more predictions.
        holder = _last_argmax(np.where(inside, inter, -1.0))
        holds = inside.sum(1)  # predictions mostly inside each ground truth: [n, G]
        split = inside.any(-1) & (np.take_along_axis(holds, holder, -1) >= 2)
        holder_gt = np.take_along_axis(gs, holder, -1)
        pp = geometry.iou(pb, pb)
        eye = np.eye(ps.shape[1], dtype=bool)[None]
        near_pred = (np.where(pv[:, None, :] & ~eye, pp, 0.0) >= background_iou).any(-1)
        c = np.full(ps.shape, CODES.index("N"), dtype=np.int8)
        g = np.full(ps.shape, -1, dtype=np.int64)
        aligned = best_iou >= iou_threshold
        rules = [
            (aligned & (best_cls != my_cls), "A", best_gt),
            (aligned, "D", best_gt),
            (n_covered >= 2, "SG", best_gt),
            (split, "SP", holder_gt),
            (best_iou >= background_iou, "M", best_gt),
            (near_pred, "ON", np.full(ps.shape, -1)),
        ]
        done = np.zeros(ps.shape, dtype=bool)
        for cond, name, ref in rules:
            hit = cond & ~done & pv
            c[hit], g[hit] = CODES.index(name), ref[hit]
            done |= hit
        code[ps[pv]], about[ps[pv]] = c[pv], g[pv]
    code[matches.tp] = CODES.index("A")
    about[matches.tp] = matches.pred_gt[matches.tp]
    code[matches.ignored] = CODES.index("IG")
    about[matches.ignored] = matches.pred_gt[matches.ignored]
    missed = ~crowd & ~matches.gt_matched
    return BoxCodes(np.asarray(CODES)[code], about, missed)


def error_codes(
    box: BoxCodes, pred_cls: np.ndarray, gt_cls: np.ndarray, classes: list[str]
) -> tuple[list[str], list[str]]:
    """``DET:{code}:CLS{t}->{y}`` per prediction (``t`` is ``bg`` without a ground truth) and
    ``NP:CLS{t}`` per missed ground truth (an empty string for the others)."""
    names = np.asarray([*classes, "bg"], dtype=object)
    t = np.where(box.gt >= 0, np.asarray(gt_cls)[np.clip(box.gt, 0, None)] if len(gt_cls) else -1, -1)
    t_names = names[np.where(t >= 0, t, len(classes))]
    y_names = names[np.asarray(pred_cls)]
    preds = [f"DET:{c}:CLS{a}->{b}" for c, a, b in zip(box.code, t_names, y_names, strict=True)]
    gts = [f"NP:CLS{names[k]}" if m else "" for k, m in zip(np.asarray(gt_cls), box.missed, strict=True)]
    return preds, gts
