"""Matching equals pycocotools' COCOeval decisions; codes on hand-made scenes."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from ml_debugger.core.detection.boxes import iou, xywh_to_xyxy, xyxy_to_xywh
from ml_debugger.core.detection.matching import codes, error_codes, match

pycocotools = pytest.importorskip("pycocotools")


def _scene(rng: np.random.Generator, n_images: int, crowd_rate: float) -> dict[str, np.ndarray]:
    """Ground truth and predictions near it (jittered, duplicated, reclassified) plus clutter, on
    a half-pixel grid so IoUs (and ties at exactly 0.5) are exact in both implementations."""
    gi, gb, gc, gcr, pi, pb, pc, ps = [], [], [], [], [], [], [], []
    for img in range(n_images):
        for _ in range(rng.integers(0, 8)):
            x, y = rng.integers(0, 80, 2) / 2
            w, h = rng.integers(4, 60, 2) / 2
            gi.append(img), gb.append([x, y, x + w, y + h]), gc.append(rng.integers(0, 3))
            gcr.append(rng.random() < crowd_rate)
            for _ in range(rng.integers(0, 4)):
                j = rng.integers(-6, 7, 4) / 2
                box = [x + j[0], y + j[1], x + w + j[2], y + h + j[3]]
                if box[2] <= box[0] or box[3] <= box[1]:
                    continue
                pi.append(img), pb.append(box), pc.append(gc[-1] if rng.random() < 0.8 else rng.integers(0, 3))
                ps.append(rng.integers(1, 20) / 20)  # coarse scores: many ties
        for _ in range(rng.integers(0, 5)):
            x, y = rng.integers(0, 80, 2) / 2
            w, h = rng.integers(2, 40, 2) / 2
            pi.append(img), pb.append([x, y, x + w, y + h]), pc.append(rng.integers(0, 3))
            ps.append(rng.integers(1, 20) / 20)
    f = lambda v, t: np.asarray(v, dtype=t)  # noqa: E731
    return {"gi": f(gi, np.int64), "gb": f(gb, float).reshape(-1, 4), "gc": f(gc, np.int64),
            "gcr": f(gcr, bool), "pi": f(pi, np.int64), "pb": f(pb, float).reshape(-1, 4),
            "pc": f(pc, np.int64), "ps": f(ps, float)}  # fmt: skip


def _cocoeval(s: dict[str, np.ndarray], n_images: int, thr: float) -> tuple[np.ndarray, np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i + 1, "width": 100, "height": 100} for i in range(n_images)],
        "categories": [{"id": c + 1, "name": str(c)} for c in range(3)],
        "annotations": [
            {"id": k + 1, "image_id": int(i) + 1, "category_id": int(c) + 1, "bbox": list(map(float, xyxy_to_xywh(b))),
             "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": int(cr)}
            for k, (i, b, c, cr) in enumerate(zip(s["gi"], s["gb"], s["gc"], s["gcr"], strict=True))
        ],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dets = [
            {"image_id": int(i) + 1, "category_id": int(c) + 1, "bbox": list(map(float, xyxy_to_xywh(b))),
             "score": float(p)}
            for i, b, c, p in zip(s["pi"], s["pb"], s["pc"], s["ps"], strict=True)
        ]  # fmt: skip
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array([thr])
        ev.params.maxDets = [10_000]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
    tp = np.zeros(len(dets), dtype=bool)
    ignored = np.zeros(len(dets), dtype=bool)
    for e in ev.evalImgs:
        if e is None:
            continue
        for k, dt_id in enumerate(e["dtIds"]):
            tp[dt_id - 1] = e["dtMatches"][0, k] > 0 and not e["dtIgnore"][0, k]
            ignored[dt_id - 1] = bool(e["dtIgnore"][0, k])
    return tp, ignored


@pytest.mark.parametrize(("seed", "thr", "crowd"), [(0, 0.5, 0.0), (1, 0.5, 0.15), (2, 0.75, 0.1), (3, 0.3, 0.0)])
def test_true_positives_equal_cocoevals(seed: int, thr: float, crowd: float) -> None:
    rng = np.random.default_rng(seed)
    s = _scene(rng, 60, crowd)
    m = match(s["pi"], s["pb"], s["pc"], s["ps"], s["gi"], s["gb"], s["gc"], s["gcr"], iou_threshold=thr, chunk=7)
    tp, ignored = _cocoeval(s, 60, thr)
    assert len(tp) > 300 and tp.sum() > 30 and (crowd == 0 or ignored.sum() > 0)
    assert np.array_equal(m.tp, tp)
    assert np.array_equal(m.ignored, ignored)


def test_iou_ties_take_the_later_ground_truth_like_cocoeval() -> None:
    # The first box is equally close to both ground truths; COCO gives it the later one, which
    # leaves the first ground truth to the second box.
    s = {
        "gi": np.array([0, 0]), "gb": np.array([[0, 0, 10, 10], [2, 0, 12, 10]], dtype=float),
        "gc": np.array([0, 0]), "gcr": np.array([False, False]),
        "pi": np.array([0, 0]), "pb": np.array([[1, 0, 11, 10], [-3, 0, 7, 10]], dtype=float),
        "pc": np.array([0, 0]), "ps": np.array([0.9, 0.8]),
    }  # fmt: skip
    m = match(s["pi"], s["pb"], s["pc"], s["ps"], s["gi"], s["gb"], s["gc"])
    tp, _ = _cocoeval(s, 1, 0.5)
    assert tp.tolist() == [True, True] and m.tp.tolist() == [True, True]
    assert m.pred_gt.tolist() == [1, 0]


def _one_image(gts: list[tuple[list[float], int]], preds: list[tuple[list[float], int, float]]) -> list[str]:
    gb = np.asarray([g[0] for g in gts], dtype=float).reshape(-1, 4)
    gc = np.asarray([g[1] for g in gts], dtype=np.int64)
    pb = np.asarray([p[0] for p in preds], dtype=float).reshape(-1, 4)
    pc = np.asarray([p[1] for p in preds], dtype=np.int64)
    ps = np.asarray([p[2] for p in preds])
    gi, pi = np.zeros(len(gb), dtype=np.int64), np.zeros(len(pb), dtype=np.int64)
    m = match(pi, pb, pc, ps, gi, gb, gc)
    c = codes(pi, pb, pc, gi, gb, gc, m)
    p_codes, g_codes = error_codes(c, pc, gc, ["cat", "dog"])
    return p_codes + [g for g in g_codes if g]


def test_codes_on_a_hand_made_scene() -> None:
    cat, cat2, dog = [0, 0, 10, 10], [40, 0, 50, 10], [20, 20, 30, 30]
    got = _one_image(
        [(cat, 0), (cat2, 0), (dog, 1), ([60, 60, 70, 70], 1), ([80, 0, 90, 10], 0), ([82, 20, 86, 24], 1)],
        [
            ([0, 0, 10, 10], 0, 0.9),  # true positive
            ([0, 0, 10, 9], 0, 0.8),  # the same cat again: duplicate
            ([20, 20, 30, 30], 0, 0.7),  # the dog called a cat: aligned, wrong class
            ([40, 0, 46, 10], 0, 0.6),  # left part of cat2 (IoU 0.6 → would be A); make it poor:
            ([60, 60, 64, 64], 1, 0.5),  # a corner of the dog at 60,60: IoU 0.16, poorly localised
            ([78, 0, 92, 26], 0, 0.5),  # over two ground truths (cat at 80 and dog at 82,20)
            ([150, 150, 160, 160], 1, 0.4),  # nothing there
            ([200, 200, 210, 210], 1, 0.3),  # nothing there, but overlapping the next one
            ([202, 202, 212, 212], 0, 0.2),
        ],
    )
    assert got[:3] == ["DET:A:CLScat->cat", "DET:D:CLScat->cat", "DET:A:CLSdog->cat"]
    assert got[3] == "DET:A:CLScat->cat"  # IoU 0.6 with cat2, same class: a true positive
    assert got[4] == "DET:M:CLSdog->dog"
    assert got[5] == "DET:SG:CLScat->cat"
    assert got[6] == "DET:N:CLSbg->dog"
    assert got[7:9] == ["DET:ON:CLSbg->dog", "DET:ON:CLSbg->cat"]
    # Missed: the dog (taken only by a cat box), the dog at 60,60 (poorly localised), and the
    # cat and dog under the box over two.
    assert sorted(got[9:]) == ["NP:CLScat", "NP:CLSdog", "NP:CLSdog", "NP:CLSdog"]


def test_a_split_ground_truth() -> None:
    got = _one_image([([0, 0, 44, 10], 0)], [([0, 0, 18, 10], 0, 0.9), ([20, 0, 40, 10], 0, 0.8)])
    assert got == ["DET:SP:CLScat->cat", "DET:SP:CLScat->cat", "NP:CLScat"]


def test_iou_agrees_with_a_direct_formula() -> None:
    a = xywh_to_xyxy(np.array([[0, 0, 10, 10], [7, 5, 10, 10]]))
    b = xywh_to_xyxy(np.array([[5, 0, 10, 10]]))
    assert iou(a, b)[:, 0] == pytest.approx([50 / 150, 40 / 160])
    assert iou(a, b, crowd=np.array([True]))[:, 0] == pytest.approx([0.5, 0.4])  # over the prediction's area
