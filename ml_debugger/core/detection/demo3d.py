"""The 3D detection demo: procedural LiDAR frames (``lidar_scenes``; ray-cast, not recorded) and
the tiny BEV detector (``bevdet``).

``build_lidar_demo(dir)`` writes, in the KITTI layout with LiDAR-frame labels:

- ``data/lidar_val/velodyne/*.bin`` with ``label_lidar/*.txt`` (labelled),
- ``data/lidar_pool/velodyne/*.bin`` (unlabelled; its labels set aside in
  ``lidar_pool_labels/`` for benchmarks and tests),
- ``classes.txt`` in both folders and ``lidar_classes.txt`` (the model's class order), and
  ``bev.pt``: the detector's weights (a state dict), trained for a few seconds on other frames
  with a fixed seed. It loads as
  ``--model ml_debugger.core.detection.bevdet:build --weights bev.pt``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml_debugger.core.detection.bevdet import train_bev
from ml_debugger.core.detection.lidar_scenes import CLASSES, Frame, make_frame

MODEL_NAME = "tinybev"
MODEL = "ml_debugger.core.detection.bevdet:build"
TRAIN, VAL, POOL = 400, 150, 200
# Post-processing of the demo's extractions: the detector scores every 1 m cell, so neighbouring
# cells propose the same object; a low BEV NMS IoU (as PointPillars-style configs use) keeps one.
SCORE_THRESH, IOU_THRESH = 0.2, 0.1
# Seeds of the three splits never overlap.
TRAIN_SEED, VAL_SEED, POOL_SEED = 0, 1_000_000, 2_000_000


@dataclass(frozen=True)
class LidarDemo:
    root: Path
    val: Path
    pool: Path
    pool_labels: Path
    classes: Path
    weights: Path


def label_lines(frame: Frame) -> str:
    """A frame's boxes as ``label_lidar`` lines: ``class x y z dx dy dz yaw``."""
    return "".join(
        f"{CLASSES[int(c)]} " + " ".join(f"{v:.4f}" for v in box) + "\n"
        for box, c in zip(frame.boxes.tolist(), frame.labels.tolist(), strict=True)
    )


def write_frames(folder: Path, seed: int, n: int, labels: Path | None) -> list[Frame]:
    """``n`` frames from ``seed`` as ``folder/velodyne/NNNNNN.bin``, their labels under ``labels``."""
    (folder / "velodyne").mkdir(parents=True, exist_ok=True)
    if labels is not None:
        labels.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        f = make_frame(seed + i)
        f.points.astype(np.float32).tofile(folder / "velodyne" / f"{i:06d}.bin")
        if labels is not None:
            (labels / f"{i:06d}.txt").write_text(label_lines(f))
        frames.append(f)
    return frames


def build_lidar_demo(
    root: str | os.PathLike[str], *, epochs: int = 12, train: int = TRAIN, val: int = VAL, pool: int = POOL
) -> LidarDemo:
    """Write the 3D demo under ``root`` (its data folders are replaced)."""
    root = Path(root)
    data = root / "data"
    for old in (data / "lidar_val", data / "lidar_pool", root / "lidar_pool_labels"):
        if old.exists():
            shutil.rmtree(old)
    write_frames(data / "lidar_val", VAL_SEED, val, data / "lidar_val" / "label_lidar")
    write_frames(data / "lidar_pool", POOL_SEED, pool, root / "lidar_pool_labels")
    classes = root / "lidar_classes.txt"
    for path in (classes, data / "lidar_val" / "classes.txt", data / "lidar_pool" / "classes.txt"):
        path.write_text("".join(f"{c}\n" for c in CLASSES))
    net = train_bev([make_frame(TRAIN_SEED + i) for i in range(train)], epochs=epochs)
    weights = root / "bev.pt"
    torch.save(net.state_dict(), weights)
    return LidarDemo(root, data / "lidar_val", data / "lidar_pool", root / "lidar_pool_labels", classes, weights)
