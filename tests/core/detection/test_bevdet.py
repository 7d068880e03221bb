"""The tiny BEV detector on procedural LiDAR frames: the adapter protocol's shapes, and a real,
imperfect detector after a few seconds of training (matched with the rotated geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_debugger.core.detection.bevdet import FEATURES, bev, candidates, train_bev
from ml_debugger.core.detection.lidar_scenes import CLASSES, make_frame
from ml_debugger.core.detection.matching import match
from ml_debugger.core.detection.rotated import ROTATED_BEV


def test_bev_grid_counts_the_points_in_range() -> None:
    pts = torch.tensor([[0.1, -19.9, -1.0, 0.5], [0.2, -19.8, -0.5, 0.7], [100.0, 0.0, 0.0, 1.0]])
    grid = bev([pts])
    assert grid.shape[:2] == (1, 4)
    assert float(grid[0, 0, 0, 0]) == pytest.approx(np.log1p(2))  # two points in the first cell
    assert float(grid[0, 0].sum()) == pytest.approx(np.log1p(2))  # the far point is out of range
    assert float(grid[0, 3, 0, 0]) == pytest.approx(0.6)  # mean intensity


def test_a_few_seconds_of_training_give_a_real_imperfect_detector() -> None:
    torch.manual_seed(0)
    net = train_bev([make_frame(i) for i in range(300)], epochs=6)
    val = [make_frame(1_000_000 + i) for i in range(60)]
    with torch.no_grad():
        out = net([torch.from_numpy(f.points) for f in val])
    n = out["boxes"].shape[1]
    assert out["boxes"].shape == (60, n, 7) and out["logits"].shape == (60, n, len(CLASSES))
    assert out["features"].shape == (60, n, FEATURES) and out["objectness"].shape == (60, n)
    pi, pb, pc, ps = candidates(out, 0.3)
    gi = np.concatenate([np.full(len(f.labels), i) for i, f in enumerate(val)])
    gb, gc = np.concatenate([f.boxes for f in val]), np.concatenate([f.labels for f in val])
    m = match(pi, pb, pc, ps, gi, gb, gc, geometry=ROTATED_BEV, iou_threshold=0.3)
    assert 0.4 < m.gt_matched.mean() < 0.99 and m.tp.mean() < 0.9  # finds objects, with real mistakes


def test_3d_post_processing_suppresses_by_rotated_bev_iou() -> None:
    from ml_debugger.core.detection.adapter import nms, postprocess, rotated_bev_iou
    from ml_debugger.core.detection.rotated import iou_matrix

    g = torch.Generator().manual_seed(1)
    n = 120
    xy = torch.rand(n, 2, generator=g) * 12
    boxes = torch.cat([xy, torch.zeros(n, 1), torch.rand(n, 3, generator=g) * 3 + 0.5,
                       torch.rand(n, 1, generator=g) * 6.28], 1)  # fmt: skip
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, 2, (n,), generator=g)
    kept = nms(boxes, scores, classes, 0.3, rotated_bev_iou).tolist()
    # the plain greedy rule, with the rotated IoU
    ious = iou_matrix(boxes, boxes, mode="bev")
    want: list[int] = []
    for i in sorted(range(n), key=lambda k: (-float(scores[k]), k)):
        if all(classes[i] != classes[j] or float(ious[i, j]) <= 0.3 for j in want):
            want.append(i)
    assert kept == want and len(kept) < n
    out = {"boxes": boxes, "logits": torch.randn(n, 2, generator=g), "features": torch.randn(n, 8, generator=g)}
    (d,) = postprocess([out], 1, score_thresh=0.0, iou_thresh=0.3, max_detections=40, box_dim=7)
    assert d.boxes.shape[1] == 7 and len(d.index) <= 40
    assert (
        float(rotated_bev_iou(d.boxes, d.boxes).fill_diagonal_(0)[d.labels[:, None] == d.labels[None, :]].max()) <= 0.3
    )
