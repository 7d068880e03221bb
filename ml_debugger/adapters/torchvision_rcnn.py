"""torchvision two-stage detectors (Faster R-CNN and relatives) under mldbg's adapter protocol.

torchvision's own post-processing keeps one box per (proposal, class) and throws the box
head's features away. This adapter runs the same modules up to the box predictor and returns,
for every proposal, its box for its best non-background class, the class probabilities
(softmax with background, background column dropped: ``scores``) and the box head's output as
the feature (1,024 values for the standard heads), with boxes mapped back to the input's pixels.
mldbg then applies its score threshold, per-class NMS and top-k. torchvision is not a
dependency of mldbg: install it beside your model.

Example::

    import torchvision
    from ml_debugger.adapters.torchvision_rcnn import TorchvisionRCNN
    from ml_debugger.data_filter import ObjectDetectionDataFilter

    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights="DEFAULT").eval()
    model = TorchvisionRCNN(detector)   # images in [0, 1]: torchvision normalises them itself
    f = ObjectDetectionDataFilter(model, model_name="frcnn", version_name="v1", n_class=90)

For ``mldbg extract --task detection --model mymodule:build``, write a ``build()`` that returns
``TorchvisionRCNN(your_detector)``, and extract with ``--mean 0 --std 1`` (the detector
normalises itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TorchvisionRCNN(nn.Module):
    """Wrap a torchvision ``GeneralizedRCNN`` (e.g. ``fasterrcnn_resnet50_fpn``) for mldbg."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        for part in ("transform", "backbone", "rpn", "roi_heads"):
            if not hasattr(detector, part):
                raise TypeError(f"{type(detector).__name__} has no {part!r}: not a torchvision two-stage detector")
        self.detector = detector

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        from collections import OrderedDict

        from torchvision.models.detection.transform import resize_boxes

        det: Any = self.detector
        originals = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = det.transform(list(images))
        features = det.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = det.rpn(image_list, features)
        heads = det.roi_heads
        pooled = heads.box_roi_pool(features, proposals, image_list.image_sizes)
        box_features = heads.box_head(pooled)
        class_logits, box_regression = heads.box_predictor(box_features)
        decoded = heads.box_coder.decode(box_regression, proposals)  # [N, classes + 1, 4]
        probs = torch.softmax(class_logits, -1)
        best = probs[:, 1:].argmax(1) + 1
        boxes = decoded[torch.arange(len(best)), best]
        out = []
        for i, (b, p, f) in enumerate(
            zip(
                boxes.split([len(x) for x in proposals]),
                probs.split([len(x) for x in proposals]),
                box_features.split([len(x) for x in proposals]),
                strict=True,
            )
        ):
            h, w = image_list.image_sizes[i]
            b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)
            out.append({"boxes": resize_boxes(b, (h, w), originals[i]), "scores": p[:, 1:], "features": f})
        return out
