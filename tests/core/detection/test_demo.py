"""The detection demo end to end without the store: procedural scenes on disk, the exported
tiny detector, mldbg's post-processing and COCO matching find real errors of several kinds."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ml_debugger.core.detection.adapter import postprocess
from ml_debugger.core.detection.datasets import open_detection_dataset
from ml_debugger.core.detection.demo import DetectionDemo, to_tensor
from ml_debugger.core.detection.matching import codes, match
from ml_debugger.core.detection.scenes import CLASSES, make_scene


def test_scenes_are_seeded_and_labelled_inside_the_image() -> None:
    a, b = make_scene(5), make_scene(5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(make_scene(6).image, a.image)
    boxes = np.concatenate([make_scene(i).boxes for i in range(200)])
    assert len(boxes) > 300 and (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_the_exported_detector_finds_objects_and_makes_real_mistakes(det_demo: DetectionDemo) -> None:
    ds = open_detection_dataset(det_demo.val, annotations=det_demo.val_annotations)
    assert ds.classes == list(CLASSES) and len(ds) == 300 and ds.boxes.height > 400 and not ds.notes
    program = torch.export.load(str(det_demo.model)).module()
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in ds.paths])  # decoded from disk
    with torch.no_grad():
        dets = postprocess(program(to_tensor(images)), len(images), score_thresh=0.3, iou_thresh=0.5)
    index = {s: i for i, s in enumerate(ds.sample_ids)}
    pi = np.concatenate([np.full(len(d.index), i) for i, d in enumerate(dets)])
    pb = np.concatenate([d.boxes.numpy() for d in dets])
    pc = np.concatenate([d.labels.numpy() for d in dets])
    ps = np.concatenate([d.scores.numpy() for d in dets])
    gt = ds.boxes
    gi = np.array([index[s] for s in gt["sample_id"]])
    gb, gc = gt.select("x1", "y1", "x2", "y2").to_numpy(), gt["cls"].to_numpy()
    m = match(pi, pb, pc, ps, gi, gb, gc)
    c = codes(pi, pb, pc, gi, gb, gc, m)
    recall = m.gt_matched.mean()
    precision = m.tp.mean()
    assert 0.6 < recall < 0.99 and 0.2 < precision < 0.95, (recall, precision)  # good, not perfect
    kinds = {k for k in c.code if k != "A"}
    assert len(kinds) >= 4, kinds  # several kinds of real mistakes
    assert all(d.features.shape[1] == 64 for d in dets)
