"""The torchvision two-stage adapter follows the protocol (runs only where torchvision imports)."""

from __future__ import annotations

import pytest
import torch

from ml_debugger.core.detection.adapter import postprocess

torchvision = pytest.importorskip("torchvision")


def test_a_torchvision_faster_rcnn_speaks_the_protocol() -> None:
    from ml_debugger.adapters.torchvision_rcnn import TorchvisionRCNN

    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=4
    ).eval()
    model = TorchvisionRCNN(detector)
    images = torch.rand(2, 3, 120, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["scores"].shape[1] == 3 and out[0]["features"].shape[1] == 1024
    dets = postprocess(out, 2, score_thresh=0.0, iou_thresh=0.5, max_detections=50, n_classes=3)
    for d in dets:
        assert len(d.index) <= 50 and (d.boxes[:, 2] <= 160).all() and (d.boxes[:, 3] <= 120).all()


def test_its_boxes_are_torchvisions_own_for_the_best_class() -> None:
    from ml_debugger.adapters.torchvision_rcnn import TorchvisionRCNN

    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=4
    ).eval()
    # torchvision's own post-processing, with every (proposal, class) box kept
    detector.roi_heads.score_thresh, detector.roi_heads.nms_thresh = 0.0, 1.01
    detector.roi_heads.detections_per_img = 100_000
    x = torch.rand(1, 3, 120, 160)
    with torch.no_grad():
        ours = TorchvisionRCNN(detector)(x)[0]
        theirs = detector(list(x))[0]
    best_score, best_class = ours["scores"].max(1)
    for box, s, c in zip(ours["boxes"], best_score, best_class + 1, strict=True):
        same = (theirs["labels"] == c) & ((theirs["scores"] - s).abs() < 1e-5)
        assert (same & ((theirs["boxes"] - box).abs().max(1).values < 1e-3)).any()
