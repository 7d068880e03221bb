"""3D detection geometry: rotated IoU throughput and agreement with shapely (issue 8, first part).

1,000,000 random box pairs ``[x, y, z, dx, dy, dz, yaw]`` (sizes 0.2–4.2 m, any yaw), in two
layouts: dense (centres in a 6 × 6 m square: a third of the pairs overlap, so nearly every pair
needs the polygon work) and scene-like (a 70 × 70 m square: most pairs are far apart and
skipped by the circle test). Then 20,000 pairs against shapely's polygon intersection.

    python benchmarks/detection3d.py

Target (issue 8, 2 cores): 1,000,000 pairs in ≤ 2 s; agreement with shapely to 1e-6.
Then the tiny BEV detector of the 3D demo (procedural frames, not recorded): trained on 400
frames for 12 epochs, its recall on 100 held-out frames at BEV IoU 0.3 / 0.5 / 0.7 (boxes of
score ≥ 0.3, before any NMS). The error-model AUROC, frame-level flags and extraction overhead
join this script with the 3D extraction.
"""

from __future__ import annotations

import math
import time

import torch
from shapely.geometry import Polygon

from ml_debugger.core.detection.rotated import bev_corners, paired_iou

N = 1_000_000


def boxes(n: int, side: float, g: torch.Generator) -> torch.Tensor:
    d = torch.float64
    xy = torch.rand(n, 2, generator=g, dtype=d) * side
    z = torch.rand(n, 1, generator=g, dtype=d) * 2
    size = torch.rand(n, 3, generator=g, dtype=d) * 4 + 0.2
    yaw = (torch.rand(n, 1, generator=g, dtype=d) - 0.5) * 2 * math.pi
    return torch.cat([xy, z, size, yaw], 1)


def main() -> None:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    for name, side in (("dense (6 m square)", 6.0), ("scene-like (70 m square)", 70.0)):
        a, b = boxes(N, side, g), boxes(N, side, g)
        for mode in ("bev", "3d"):
            t = time.perf_counter()
            iou = paired_iou(a, b, mode=mode)
            dt = time.perf_counter() - t
            print(f"{name:<26} {mode:>3}: {N:,} pairs in {dt:5.2f} s ({(iou > 0).float().mean():.1%} overlap)")
    a, b = boxes(20_000, 6.0, g), boxes(20_000, 6.0, g)
    t = time.perf_counter()
    ours = paired_iou(a, b, mode="bev")
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = []
    for x, y in zip(bev_corners(a).tolist(), bev_corners(b).tolist(), strict=True):
        pa, pb = Polygon(x), Polygon(y)
        inter = pa.intersection(pb).area
        union = pa.area + pb.area - inter
        ref.append(inter / union if union > 1e-9 else 0.0)
    t_ref = time.perf_counter() - t
    diff = (ours - torch.tensor(ref, dtype=torch.float64)).abs().max().item()
    print(f"20,000 pairs: mldbg {t_ours:.3f} s, shapely {t_ref:.2f} s ({t_ref / t_ours:.0f}×); max |ΔIoU| {diff:.2e}")


def bev_detector() -> None:
    import numpy as np

    from ml_debugger.core.detection.bevdet import candidates, train_bev
    from ml_debugger.core.detection.lidar_scenes import CLASSES, make_frame
    from ml_debugger.core.detection.matching import match
    from ml_debugger.core.detection.rotated import ROTATED_BEV

    torch.manual_seed(0)
    train = [make_frame(i) for i in range(400)]
    t = time.perf_counter()
    net = train_bev(train, epochs=12)
    print(f"\nBEV detector: 400 frames × 12 epochs trained in {time.perf_counter() - t:.1f} s")
    val = [make_frame(1_000_000 + i) for i in range(100)]
    with torch.no_grad():
        out = net([torch.from_numpy(f.points) for f in val])
    pi, pb, pc, ps = candidates(out, 0.3)
    gi = np.concatenate([np.full(len(f.labels), i) for i, f in enumerate(val)])
    gb, gc = np.concatenate([f.boxes for f in val]), np.concatenate([f.labels for f in val])
    print(f"{len(gc):,} objects in 100 held-out frames, {len(pi):,} candidate boxes of score ≥ 0.3")
    for thr in (0.3, 0.5, 0.7):
        m = match(pi, pb, pc, ps, gi, gb, gc, geometry=ROTATED_BEV, iou_threshold=thr)
        per = ", ".join(f"{n} {m.gt_matched[gc == c].mean():.2f}" for c, n in enumerate(CLASSES))
        print(f"BEV IoU {thr}: recall {m.gt_matched.mean():.3f} ({per})")


if __name__ == "__main__":
    main()
    bev_detector()
