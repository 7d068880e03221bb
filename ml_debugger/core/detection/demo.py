"""The detection demo: procedural scenes (see ``scenes``; not photographs) and the tiny detector.

``build_detection_demo(dir)`` writes ``data/det_val`` (PNGs with their COCO JSON
``det_val.json``), ``data/det_pool`` (PNGs, unlabelled; the ground truth set aside in
``det_pool.json`` for benchmarks and tests), ``classes.txt``, and ``det.pt2``: the tiny detector
trained on 1,500 other scenes for a few seconds with a fixed seed, exported with
``torch.export``. Its output follows the adapter protocol, so mldbg applies score threshold,
NMS and top-k itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml_debugger.core.detection.scenes import CLASSES, SIZE, Scene, make_scene
from ml_debugger.core.detection.tinydet import train_detector

MODEL_NAME = "tinydet"
TRAIN, VAL, POOL = 1500, 300, 400
# Seeds of the three splits never overlap.
TRAIN_SEED, VAL_SEED, POOL_SEED = 0, 1_000_000, 2_000_000
MEAN, STD = 0.5, 0.5


@dataclass(frozen=True)
class DetectionDemo:
    root: Path
    val: Path
    val_annotations: Path
    pool: Path
    pool_annotations: Path
    classes: Path
    model: Path


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 → the detector's input ``[N, 3, H, W]``, normalised as the demo's
    preprocessing (mean 0.5, std 0.5) does."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def coco_doc(scenes: list[Scene], names: list[str]) -> dict:
    """The COCO JSON of ``scenes`` saved as ``names`` (boxes as [x, y, w, h])."""
    images: list[dict] = []
    anns: list[dict] = []
    for i, (s, name) in enumerate(zip(scenes, names, strict=True)):
        images.append({"id": i + 1, "file_name": name, "width": SIZE, "height": SIZE})
        for b, c in zip(s.boxes.tolist(), s.labels.tolist(), strict=True):
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
                 "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])}
            )  # fmt: skip
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}


def _write_split(folder: Path, seed: int, n: int) -> tuple[list[Scene], list[str]]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    scenes = [make_scene(seed + i) for i in range(n)]
    names = [f"scene_{seed + i:07d}.png" for i in range(n)]
    for s, name in zip(scenes, names, strict=True):
        Image.fromarray(s.image).save(folder / name)
    return scenes, names


def build_detection_demo(
    root: str | os.PathLike[str], *, epochs: int = 6, val: int = VAL, pool: int = POOL
) -> DetectionDemo:
    """Write the detection demo under ``root`` (its data folders are replaced); ``val`` and
    ``pool`` scenes (benchmarks use more than the demo)."""
    import shutil

    root = Path(root)
    data = root / "data"
    for split in ("det_val", "det_pool"):
        if (data / split).exists():
            shutil.rmtree(data / split)
    val_scenes, val_names = _write_split(data / "det_val", VAL_SEED, val)
    pool_scenes, pool_names = _write_split(data / "det_pool", POOL_SEED, pool)
    (root / "det_val.json").write_text(json.dumps(coco_doc(val_scenes, val_names)))
    (root / "det_pool.json").write_text(json.dumps(coco_doc(pool_scenes, pool_names)))
    classes = root / "det_classes.txt"
    classes.write_text("".join(f"{c}\n" for c in CLASSES))
    train = [make_scene(TRAIN_SEED + i) for i in range(TRAIN)]
    net = train_detector(to_tensor(np.stack([s.image for s in train])), train, epochs=epochs)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    example = to_tensor(np.stack([s.image for s in train[:2]]))
    program = torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}})
    model = root / "det.pt2"
    torch.export.save(program, str(model))
    return DetectionDemo(
        root, data / "det_val", root / "det_val.json", data / "det_pool", root / "det_pool.json", classes, model
    )
