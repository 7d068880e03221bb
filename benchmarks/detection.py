"""Detection matching: throughput, and agreement with pycocotools, side by side.

10,000 images with 20 ground-truth boxes and 50 predictions each (jittered copies of the
ground truth, 20% with another class; coordinates on a half-pixel grid so both sides compute
the same IoUs exactly). Times ``match`` and ``codes`` and pycocotools' ``COCOeval.evaluate``
(which makes the same true/false-positive decisions) on the same boxes, and counts the
predictions where the two disagree.

Then the error model on held-out procedural scenes: the tiny detector of the demo, 1,000
labelled scenes to evaluate on and 1,000 held-out scenes (their truth set aside) to measure
on: AUROC of per-box error_proba vs 1 − box score (all kept boxes, and the boxes a user would
act on, score ≥ 0.3), and image-level precision/recall of the ``img_error_threshold`` flag
for "the image holds a wrong box of score ≥ 0.3 or misses an object at that score", beside
the same number of images flagged by the lowest box score.

    python benchmarks/detection.py

Target (issue 7, 2 cores): matching 10,000 images × 50 boxes in ≤ 5 s; 100% agreement.
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


def error_model() -> None:
    import polars as pl
    import torch
    from _common import CACHE

    from ml_debugger.core.detection.datasets import open_detection_dataset
    from ml_debugger.core.detection.demo import build_detection_demo
    from ml_debugger.core.detection.evaluate import evaluate_detection, label_boxes
    from ml_debugger.core.detection.extract import DetectionRequest, extract_detections
    from ml_debugger.core.detection.strategy import BBoxStrategy, box_frame
    from ml_debugger.core.metrics import auroc, auroc_difference
    from ml_debugger.core.scoring import score
    from ml_debugger.core.store import Store

    torch.set_num_threads(2)
    root = CACHE / "detection"
    demo = build_detection_demo(root, val=1000, pool=1000)
    db = root / "bench.duckdb"
    db.unlink(missing_ok=True)
    common = dict(model=str(demo.model), model_name="tinydet", mean=(0.5,) * 3, std=(0.5,) * 3, workers=0)
    t = time.perf_counter()
    extract_detections(DetectionRequest(dataset=str(demo.val), name="val", annotations=str(demo.val_annotations),
                                        **common), db=db)  # type: ignore[arg-type]  # fmt: skip
    extract_detections(DetectionRequest(dataset=str(demo.pool), name="pool", classes_file=str(demo.classes),
                                        **common), db=db)  # type: ignore[arg-type]  # fmt: skip
    t_extract = time.perf_counter() - t
    t = time.perf_counter()
    res = evaluate_detection("val", db=db).result
    score("pool", db=db, result=res.name)
    t_fit = time.perf_counter() - t
    with Store(db, read_only=True) as store:
        boxes = box_frame(store.read_box_scores(res.name, "pool"), res.classes)
        classes = store.require_run("pool").classes
    truth = open_detection_dataset(demo.pool, annotations=demo.pool_annotations).boxes
    lab = label_boxes(boxes, truth, classes, 0.5)
    y = ~lab.tp
    ep, sc = boxes["error_proba"].to_numpy(), boxes["score"].to_numpy()
    print(
        f"\nheld-out procedural pool: {boxes['sample_id'].n_unique():,} images, {len(y):,} kept boxes, "
        f"{int(y.sum()):,} not right; extract 2,000 images {t_extract:.1f} s, evaluate + score {t_fit:.1f} s"
    )
    for name, keep in (("all kept boxes (score ≥ 0.05)", sc >= 0), ("boxes with score ≥ 0.3", sc >= 0.3)):
        d = auroc_difference(y[keep], ep[keep], 1 - sc[keep])
        print(
            f"{name:<32} n={int(keep.sum()):6,}  AUROC error_proba {auroc(y[keep], ep[keep]):.4f}  "
            f"1 − score {auroc(y[keep], 1 - sc[keep]):.4f}  Δ {d['difference']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        )
    # Image level at the operating score 0.3: wrong boxes, or objects no box of score ≥ 0.3 found.
    confident = boxes.filter(pl.col("score") >= 0.3)
    lab3 = label_boxes(confident, truth, classes, 0.5)
    wrong = set(confident.filter(pl.Series(~lab3.tp))["sample_id"])
    missed = set(truth.filter(pl.Series(lab3.gt_missed))["sample_id"])  # objects no box of score ≥ 0.3 found
    bad = wrong | missed
    strategy = BBoxStrategy.from_value({"bbox_filter": "score>=0.3", "aggregation": "max", "img_error_threshold": 0.5})
    images = strategy.image_scores(boxes, pl.Series(sorted(set(boxes["sample_id"]))))
    flagged = set(images.filter(pl.col("flag"))["sample_id"])
    k = len(flagged)
    base = boxes.filter(pl.col("score") >= 0.3).group_by("sample_id").agg((1 - pl.col("score")).max().alias("s"))
    base_flagged = set(base.sort("s", descending=True)["sample_id"].head(k))

    def pr(sel: set) -> str:
        hit = len(sel & bad)
        return f"precision {hit / max(1, len(sel)):.3f}, recall {hit / max(1, len(bad)):.3f}"

    print(f"images with a problem at score 0.3: {len(bad):,} of {images.height:,}")
    print(f"flag: max error_proba of boxes ≥ 0.3 is ≥ 0.5: {k:,} images, {pr(flagged)}")
    print(f"the same number flagged by the lowest box score:  {pr(base_flagged)}")


if __name__ == "__main__":
    main()
    error_model()
