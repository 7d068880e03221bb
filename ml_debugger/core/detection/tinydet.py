"""A tiny one-stage detector for the procedural scenes, trained on the CPU in seconds.

It follows the adapter protocol directly (see ``adapter``): a small convolutional backbone at
stride 4 gives a 16 × 16 grid on a 64 × 64 image; every cell is a candidate box with class
logits, an objectness and its 64-wide feature vector, and predicts its box as distances to the
four sides (FCOS-style). mldbg's post-processing (score threshold, NMS, top-k) picks the boxes.
It is deliberately small and briefly trained, so it makes real mistakes of every kind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ml_debugger.core.detection.scenes import CLASSES, SIZE, Scene
from ml_debugger.core.detection.training import fit

STRIDE = 4
FEATURES = 64


class TinyDetector(nn.Module):
    def __init__(self, n_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, FEATURES, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(FEATURES, FEATURES, 3, padding=2, dilation=2),
            nn.ReLU(),
        )
        self.cls = nn.Conv2d(FEATURES, n_classes, 1)
        self.obj = nn.Conv2d(FEATURES, 1, 1)
        self.box = nn.Conv2d(FEATURES, 4, 1)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per cell, flattened row-major: features, class logits, objectness logit, log side distances."""
        f = self.backbone(x)
        flat = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731  [B, C, H, W] -> [B, H*W, C]
        return flat(f), flat(self.cls(f)), flat(self.obj(f))[..., 0], flat(self.box(f))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, logits, obj, ltrb = self.heads(x)
        h, w = x.shape[-2] // STRIDE, x.shape[-1] // STRIDE
        centres = cell_centres(h, w, x.device)
        dist = ltrb.clamp(max=4.0).exp() * STRIDE
        boxes = torch.cat([centres - dist[..., :2], centres + dist[..., 2:]], -1)
        return {"boxes": boxes, "logits": logits, "objectness": torch.sigmoid(obj), "features": feats}


def cell_centres(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1).float() * STRIDE + STRIDE / 2


def targets(scene: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell: positive (its centre lies in an object's central region), class, log distances.
    A cell inside several objects belongs to the smallest."""
    n = (SIZE // STRIDE) ** 2
    centres = cell_centres(SIZE // STRIDE, SIZE // STRIDE)
    pos = torch.zeros(n, dtype=torch.bool)
    cls = torch.zeros(n, dtype=torch.long)
    reg = torch.zeros(n, 4)
    best_area = torch.full((n,), float("inf"))
    for box, label in zip(torch.from_numpy(scene.boxes), torch.from_numpy(scene.labels), strict=True):
        mid = (box[:2] + box[2:]) / 2
        radius = torch.clamp((box[2:] - box[:2]) / 4, min=STRIDE / 2)
        inside = ((centres - mid).abs() <= radius).all(-1)
        area = float((box[2] - box[0]) * (box[3] - box[1]))
        take = inside & (area < best_area)
        pos |= take
        cls[take] = int(label)
        dist = torch.cat([centres - box[:2], box[2:] - centres], -1).clamp(min=0.5)
        reg[take] = (dist[take] / STRIDE).log()
        best_area[take] = area
    return pos, cls, reg


def train_detector(
    images: torch.Tensor, scenes: list[Scene], *, epochs: int = 6, seed: int = 0, batch: int = 32
) -> TinyDetector:
    """Train on ``images`` ([N, 3, 64, 64], normalised) and their scenes; deterministic per seed."""
    torch.manual_seed(seed)
    net = TinyDetector()
    t = [targets(s) for s in scenes]
    pos = torch.stack([x[0] for x in t])
    cls = torch.stack([x[1] for x in t])
    reg = torch.stack([x[2] for x in t])

    def batch_loss(b: torch.Tensor) -> torch.Tensor:
        _, logits, obj, ltrb = net.heads(images[b])
        p = pos[b]
        loss = F.binary_cross_entropy_with_logits(obj, p.float(), pos_weight=torch.tensor(4.0))
        if p.any():
            loss = loss + F.cross_entropy(logits[p], cls[b][p]) + F.smooth_l1_loss(ltrb[p], reg[b][p])
        return loss

    fit(net, len(images), batch_loss, epochs=epochs, batch=batch, lr=3e-3, seed=seed)
    return net
