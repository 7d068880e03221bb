"""Detection matching: throughput, and agreement with pycocotools, side by side.

10,000 images with 20 ground-truth boxes and 50 predictions each (jittered copies of the
ground truth, 20% with another class; coordinates on a half-pixel grid so both sides compute
the same IoUs exactly). Times ``match`` and ``codes`` and pycocotools' ``COCOeval.evaluate``
(which makes the same true/false-positive decisions) on the same boxes, and counts the
predictions where the two disagree.

    python benchmarks/detection.py

Target (issue 7, 2 cores): matching 10,000 images × 50 boxes in ≤ 5 s; 100% agreement.
(The error-model AUROC and image-level precision/recall join this script with the detector.)
"""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np

from ml_debugger.core.detection.boxes import xyxy_to_xywh
from ml_debugger.core.detection.matching import codes, match

IMAGES, GT_PER_IMAGE, PRED_PER_IMAGE, CLASSES = 10_000, 20, 50, 3


def scene(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    gi = np.repeat(np.arange(IMAGES), GT_PER_IMAGE)
    xy = rng.integers(0, 1200, (len(gi), 2)) / 2
    wh = rng.integers(20, 200, (len(gi), 2)) / 2
    gb = np.concatenate([xy, xy + wh], 1)
    gc = rng.integers(0, CLASSES, len(gi))
    pi = np.repeat(np.arange(IMAGES), PRED_PER_IMAGE)
    src = rng.integers(0, GT_PER_IMAGE, len(pi)) + pi * GT_PER_IMAGE
    pb = gb[src] + rng.integers(-12, 13, (len(pi), 4)) / 2
    pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
    pc = np.where(rng.random(len(pi)) < 0.8, gc[src], rng.integers(0, CLASSES, len(pi)))
    ps = rng.integers(1, 1000, len(pi)) / 1000
    return {"gi": gi, "gb": gb, "gc": gc, "pi": pi, "pb": pb, "pc": pc, "ps": ps}


def cocoeval_tp(s: dict[str, np.ndarray]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gwh = xyxy_to_xywh(s["gb"])
    gt.dataset = {
        "images": [{"id": i + 1} for i in range(IMAGES)],
        "categories": [{"id": c + 1} for c in range(CLASSES)],
        "annotations": [
            {"id": k + 1, "image_id": int(i) + 1, "category_id": int(c) + 1, "bbox": b.tolist(),
             "area": float(b[2] * b[3]), "iscrowd": 0}
            for k, (i, b, c) in enumerate(zip(s["gi"], gwh, s["gc"], strict=True))
        ],
    }  # fmt: skip
    pwh = xyxy_to_xywh(s["pb"])
    dets = np.column_stack([s["pi"] + 1, pwh, s["ps"], s["pc"] + 1])
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.maxDets = [PRED_PER_IMAGE]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
    tp = np.zeros(len(dets), dtype=bool)
    for e in ev.evalImgs:
        if e is not None:
            tp[np.asarray(e["dtIds"], dtype=np.int64) - 1] = e["dtMatches"][0] > 0
    return tp


def main() -> None:
    s = scene()
    print(f"{IMAGES:,} images, {len(s['gb']):,} ground-truth boxes, {len(s['pb']):,} predictions")
    t = time.perf_counter()
    m = match(s["pi"], s["pb"], s["pc"], s["ps"], s["gi"], s["gb"], s["gc"])
    t_match = time.perf_counter() - t
    t = time.perf_counter()
    c = codes(s["pi"], s["pb"], s["pc"], s["gi"], s["gb"], s["gc"], m)
    t_codes = time.perf_counter() - t
    t = time.perf_counter()
    tp = cocoeval_tp(s)
    t_coco = time.perf_counter() - t
    agree = float((tp == m.tp).mean())
    print(f"mldbg match          {t_match:6.2f} s")
    print(f"mldbg codes          {t_codes:6.2f} s")
    print(f"mldbg match + codes  {t_match + t_codes:6.2f} s   (target ≤ 5 s)")
    print(f"pycocotools evaluate {t_coco:6.2f} s   ({t_coco / t_match:.1f}× mldbg match)")
    print(f"true-positive decisions equal to pycocotools': {agree:.4%} ({int((tp != m.tp).sum())} differ)")
    counts = {k: int((c.code == k).sum()) for k in ("A", "D", "M", "SP", "SG", "ON", "N")}
    print(f"codes: {counts}; missed ground truths (NP): {int(c.missed.sum()):,}")


if __name__ == "__main__":
    main()
