"""`extract_detections` on the procedural demo: the store holds what the detector kept, the
ground truth, and resumes; a detector that breaks the protocol is refused by name."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_debugger.core.detection.adapter import postprocess
from ml_debugger.core.detection.datasets import open_detection_dataset
from ml_debugger.core.detection.demo import DetectionDemo, to_tensor
from ml_debugger.core.detection.extract import DetectionRequest, extract_detections
from ml_debugger.core.store import Store
from ml_debugger.errors import ModelError, RunExistsError


def _req(det_demo: DetectionDemo, **kw: object) -> DetectionRequest:
    base: dict = dict(dataset=str(det_demo.val), name="det_val", model=str(det_demo.model),
                      annotations=str(det_demo.val_annotations), workers=0, batch_size=32)  # fmt: skip
    base.update(kw)
    return DetectionRequest(**base)


def test_extract_stores_the_kept_boxes_features_and_ground_truth(det_demo: DetectionDemo, tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    s = extract_detections(_req(det_demo), db=db)
    ds = open_detection_dataset(det_demo.val, annotations=det_demo.val_annotations)
    assert s.n_samples == 300 and s.labelled and s.n_gt_boxes == ds.boxes.height and s.n_boxes > 300
    with Store(db, read_only=True) as store:
        run = store.require_run("det_val")
        boxes, gt = store.read_boxes("det_val"), store.read_gt_boxes("det_val")
        feats = store.box_features("det_val", 64)
        images = store.read_images("det_val")
    assert run.task == "detection" and run.classes == ["circle", "square", "triangle"] and run.feature_dim == 64
    assert gt.sort("sample_id", "box").select("x1", "cls").equals(ds.boxes.sort("sample_id", "box").select("x1", "cls"))
    assert feats.shape == (boxes.height, 64) and images["n_boxes"].sum() == boxes.height
    assert (boxes["x1"] >= 0).all() and (boxes["x2"] <= 64).all() and (boxes["score"] >= 0.05).all()
    # The stored boxes of one image are what the detector and mldbg's post-processing give directly.
    from PIL import Image

    sid = images.sort("n_boxes")["sample_id"][-1]
    program = torch.export.load(str(det_demo.model)).module()
    x = to_tensor(np.asarray(Image.open(det_demo.val / sid).convert("RGB"))[None])
    with torch.no_grad():
        (d,) = postprocess(program(x), 1, score_thresh=0.05, iou_thresh=0.5, max_detections=100)
    mine = boxes.filter(boxes["sample_id"] == sid).sort("box")
    direct = np.clip(d.boxes.numpy(), 0, 64)  # stored boxes are clipped to the image
    assert np.allclose(mine.select("x1", "y1", "x2", "y2").to_numpy(), direct, atol=1e-4)
    assert mine["label"].to_list() == d.labels.tolist()


def test_resume_and_refusals(det_demo: DetectionDemo, tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    first = extract_detections(_req(det_demo), db=db)
    with Store(db) as store:  # as if the job had stopped after some batches
        store.con.execute("DELETE FROM samples WHERE run = 'det_val' AND sample_id >= 'scene_1000200'")
        for t in ("images", "boxes", "box_features_64"):
            store.con.execute(f"DELETE FROM {t} WHERE run = 'det_val' AND sample_id >= 'scene_1000200'")
    again = extract_detections(_req(det_demo), db=db)
    assert again.resumed and again.n_new == 100 and again.n_boxes == first.n_boxes
    assert extract_detections(_req(det_demo), db=db).status == "up-to-date"
    with pytest.raises(RunExistsError, match="different settings"):
        extract_detections(_req(det_demo, score_thresh=0.3), db=db)
    fewer = extract_detections(_req(det_demo, score_thresh=0.3, overwrite=True), db=db)
    assert fewer.n_boxes < first.n_boxes and fewer.n_gt_boxes == first.n_gt_boxes
    pool = extract_detections(_req(det_demo, dataset=str(det_demo.pool), name="pool", annotations=None,
                                   classes_file=str(det_demo.classes)), db=db)  # fmt: skip
    assert not pool.labelled and pool.n_gt_boxes == 0 and pool.n_samples == 400


def test_a_detector_that_breaks_the_protocol_is_refused(det_demo: DetectionDemo, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (tmp_path / "baddet.py").write_text(
        "import torch\n"
        "class Bad(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        n = x.shape[0]\n"
        "        return {'boxes': torch.zeros(n, 5, 4), 'logits': torch.zeros(n, 5, 3)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="the output dict has no 'features'"):
        extract_detections(_req(det_demo, model="baddet:Bad"), db=tmp_path / "m.duckdb")
    sys.modules.pop("baddet", None)


def test_cli_extract_and_show_a_detection_run(det_demo: DetectionDemo, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from ml_debugger.cli.app import app

    runner = CliRunner()
    db = str(tmp_path / "m.duckdb")
    common = ["--model", str(det_demo.model), "--mean", "0.5", "--std", "0.5", "--db", db, "--workers", "0"]
    r = runner.invoke(app, ["extract", str(det_demo.val), "--task", "detection", "--format", "coco",
                            "--annotations", str(det_demo.val_annotations), "--name", "det_val", *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "300 images (300 new)" in r.output and "ground-truth boxes" in r.output
    r = runner.invoke(app, ["show", "det_val", "--db", db, "--json"])
    shown = json.loads(r.stdout)
    assert shown["images"] == 300 and shown["gt_boxes"] > 400 and shown["run"]["task"] == "detection"
    assert sum(c["ground_truth"] for c in shown["classes"]) == shown["gt_boxes"]
    r = runner.invoke(app, ["show", "det_val", "--db", db])
    assert "boxes kept" in r.output and "triangle" in r.output
    r = runner.invoke(app, ["extract", str(det_demo.val), "--format", "coco", *common])
    assert r.exit_code == 2 and "add --task detection" in r.output
    r = runner.invoke(app, ["extract", str(det_demo.val), "--task", "detection", "--format", "coco", *common])
    assert r.exit_code == 2 and "--format coco needs --annotations FILE" in r.output
