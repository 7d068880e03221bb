"""mAP from our matching equals pycocotools' on the detection demo's real predictions."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from ml_debugger.core.detection.boxes import xyxy_to_xywh
from ml_debugger.core.detection.demo import DetectionDemo
from ml_debugger.core.detection.extract import DetectionRequest, extract_detections
from ml_debugger.core.detection.metrics import mean_ap
from ml_debugger.core.store import Store

pytest.importorskip("pycocotools")


def test_map_equals_cocoeval(det_demo: DetectionDemo, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    db = tmp_path / "m.duckdb"
    req = DetectionRequest(dataset=str(det_demo.val), name="v", model=str(det_demo.model), workers=0,
                           annotations=str(det_demo.val_annotations), mean=(0.5,) * 3, std=(0.5,) * 3)  # fmt: skip
    extract_detections(req, db=db)
    with Store(db, read_only=True) as store:
        boxes, gt = store.read_boxes("v"), store.read_gt_boxes("v")
    ids = {s: i for i, s in enumerate(sorted(set(boxes["sample_id"]) | set(gt["sample_id"])))}
    pi = np.array([ids[s] for s in boxes["sample_id"]])
    gi = np.array([ids[s] for s in gt["sample_id"]])
    pb = boxes.select("x1", "y1", "x2", "y2").to_numpy().astype(np.float64)
    gb = gt.select("x1", "y1", "x2", "y2").to_numpy().astype(np.float64)
    ours = mean_ap(pi, pb, boxes["label"].to_numpy(), boxes["score"].to_numpy(), gi, gb, gt["cls"].to_numpy())
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i + 1} for i in range(len(ids))],
        "categories": [{"id": c + 1} for c in range(3)],
        "annotations": [{"id": k + 1, "image_id": int(i) + 1, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": xyxy_to_xywh(b).tolist(), "area": float((b[2] - b[0]) * (b[3] - b[1]))}
                        for k, (i, b, c) in enumerate(zip(gi, gb, gt["cls"].to_numpy(), strict=True))],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        dets = np.column_stack([pi + 1, xyxy_to_xywh(pb), boxes["score"].to_numpy(), boxes["label"].to_numpy() + 1])
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.2 < ours["map50"] < 0.99  # a real, imperfect detector
    assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-6)
