"""A tiny bird's-eye-view detector for the procedural LiDAR frames, trained on the CPU in seconds.

It takes a list of point clouds (``[N_i, 4]``: x, y, z, intensity), scatters them into a BEV
grid of 0.5 m cells over ``PC_RANGE`` (log point count, highest and mean height, mean
intensity per cell), runs a small CNN at stride 2 (1 m cells), and returns every cell as a
candidate box ``[x, y, z, dx, dy, dz, yaw]`` with class logits, an objectness and its 64-wide
feature: the adapter protocol, so mldbg's post-processing (score threshold, rotated NMS,
top-k) picks the boxes. Deliberately small and briefly trained, so it makes real mistakes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml_debugger.core.detection.lidar_scenes import CLASSES, PC_RANGE, Frame
from ml_debugger.core.detection.training import fit

CELL = 0.5
STRIDE = 2  # output cells are STRIDE × CELL metres
FEATURES = 64
NX = round((PC_RANGE[3] - PC_RANGE[0]) / CELL)
NY = round((PC_RANGE[4] - PC_RANGE[1]) / CELL)
# Mean class sizes (dx, dy, dz): the size head predicts log ratios to them.
PRIOR = torch.tensor([[4.0, 1.8, 1.5], [0.6, 0.6, 1.7], [1.8, 0.6, 1.7]])


def bev(points: list[torch.Tensor]) -> torch.Tensor:
    """Point clouds → ``[B, 4, NY, NX]`` BEV features (points outside PC_RANGE are ignored)."""
    dev = points[0].device if len(points) else torch.device("cpu")
    out = torch.zeros(len(points), 4, NY * NX, device=dev)
    for b, p in enumerate(points):
        p = p.float()
        ix = ((p[:, 0] - PC_RANGE[0]) / CELL).floor().long()
        iy = ((p[:, 1] - PC_RANGE[1]) / CELL).floor().long()
        ok = (ix >= 0) & (ix < NX) & (iy >= 0) & (iy < NY) & (p[:, 2] >= PC_RANGE[2]) & (p[:, 2] < PC_RANGE[5])
        cell = iy[ok] * NX + ix[ok]
        z = p[ok, 2] - PC_RANGE[2]
        zero = torch.zeros(NY * NX, device=dev)
        count = zero.clone().index_add_(0, cell, torch.ones_like(z))
        out[b, 0] = torch.log1p(count)
        out[b, 1] = zero.clone().scatter_reduce_(0, cell, z, "amax", include_self=True)
        out[b, 2] = zero.clone().index_add_(0, cell, z) / count.clamp(min=1)
        out[b, 3] = zero.clone().index_add_(0, cell, p[ok, 3]) / count.clamp(min=1)
    return out.reshape(len(points), 4, NY, NX)


def cell_centres() -> torch.Tensor:
    """``[H*W, 2]`` (x, y) of the output cells, row-major."""
    h, w = NY // STRIDE, NX // STRIDE
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    size = CELL * STRIDE
    return torch.stack([xs.flatten() * size + PC_RANGE[0] + size / 2, ys.flatten() * size + PC_RANGE[1] + size / 2], -1)


class TinyBEV(nn.Module):
    """The demo's 3D detector; ``pc_range`` tells mldbg which points it expects."""

    pc_range = PC_RANGE

    def __init__(self, n_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(4, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, FEATURES, 3, stride=STRIDE, padding=1),
            nn.ReLU(),
            nn.Conv2d(FEATURES, FEATURES, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(FEATURES, FEATURES, 3, padding=1),
            nn.ReLU(),
        )
        self.cls = nn.Conv2d(FEATURES, n_classes, 1)
        self.obj = nn.Conv2d(FEATURES, 1, 1)
        self.reg = nn.Conv2d(FEATURES, 8, 1)  # dx_off, dy_off, z, log size ×3, sin 2·yaw, cos 2·yaw

    def heads(self, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.backbone(grid)
        flat = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731
        return flat(f), flat(self.cls(f)), flat(self.obj(f))[..., 0], flat(self.reg(f))

    def forward(self, points: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        feats, logits, obj, reg = self.heads(bev(points))
        centre = cell_centres().to(feats.device)
        label = logits.argmax(-1)
        size = PRIOR.to(feats.device)[label] * reg[..., 3:6].clamp(-2, 2).exp()
        xy = centre + torch.tanh(reg[..., :2]) * CELL * STRIDE
        # A footprint is the same at yaw and yaw + π: the head predicts 2·yaw, which has no such ambiguity.
        yaw = torch.atan2(reg[..., 6], reg[..., 7]) / 2
        boxes = torch.cat([xy, reg[..., 2:3], size, yaw[..., None]], -1)
        return {"boxes": boxes, "logits": logits, "objectness": torch.sigmoid(obj), "features": feats}


def build() -> TinyBEV:
    """The factory for ``--model ml_debugger.core.detection.bevdet:build --weights bev.pt``."""
    return TinyBEV().eval()


def targets(frame: Frame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output cell: positive (within one cell of an object's centre), class, regression."""
    centre = cell_centres()
    n = len(centre)
    pos = torch.zeros(n, dtype=torch.bool)
    cls = torch.zeros(n, dtype=torch.long)
    reg = torch.zeros(n, 8)
    best = torch.full((n,), float("inf"))
    size = CELL * STRIDE
    for box, label in zip(torch.from_numpy(frame.boxes), torch.from_numpy(frame.labels), strict=True):
        d = (centre - box[:2]).norm(dim=1)
        take = (d <= size) & (d < best)
        pos |= take
        cls[take] = int(label)
        off = ((box[:2] - centre[take]) / size).clamp(-0.999, 0.999)
        reg[take, :2] = torch.atanh(off)
        reg[take, 2] = box[2]
        reg[take, 3:6] = (box[3:6] / PRIOR[int(label)]).log()
        reg[take, 6], reg[take, 7] = math.sin(2 * float(box[6])), math.cos(2 * float(box[6]))
        best[take] = d[take]
    return pos, cls, reg


def train_bev(frames: list[Frame], *, epochs: int = 8, seed: int = 0, batch: int = 16) -> TinyBEV:
    """Train TinyBEV on procedural frames; deterministic for a seed on one machine."""
    torch.manual_seed(seed)
    net = TinyBEV()
    grids = bev([torch.from_numpy(f.points) for f in frames])
    t = [targets(f) for f in frames]
    pos, cls, reg = (torch.stack([x[i] for x in t]) for i in range(3))

    def batch_loss(b: torch.Tensor) -> torch.Tensor:
        _, logits, obj, r = net.heads(grids[b])
        p = pos[b]
        loss = F.binary_cross_entropy_with_logits(obj, p.float(), pos_weight=torch.tensor(10.0))
        if p.any():
            rp, tp = r[p], reg[b][p]
            loss = loss + F.cross_entropy(logits[p], cls[b][p]) + F.smooth_l1_loss(rp[:, :6], tp[:, :6])
            loss = loss + F.mse_loss(F.normalize(rp[:, 6:8], dim=1), tp[:, 6:8])
        return loss

    fit(net, len(frames), batch_loss, epochs=epochs, batch=batch, lr=2e-3, seed=seed)
    return net


def candidates(out: dict[str, torch.Tensor], score_thresh: float) -> tuple[np.ndarray, ...]:
    """The batch's candidate boxes of score ≥ ``score_thresh`` (before any NMS), flattened for
    ``matching.match``: frame index, box ``[K, 7]``, class and score arrays."""
    score, label = (torch.softmax(out["logits"], -1) * out["objectness"][..., None]).max(-1)
    keep = [torch.nonzero(s >= score_thresh).reshape(-1) for s in score]
    return (
        np.concatenate([np.full(len(k), i) for i, k in enumerate(keep)]),
        np.concatenate([out["boxes"][i][k].numpy() for i, k in enumerate(keep)]).reshape(-1, 7),
        np.concatenate([label[i][k].numpy() for i, k in enumerate(keep)]),
        np.concatenate([score[i][k].numpy() for i, k in enumerate(keep)]),
    )
