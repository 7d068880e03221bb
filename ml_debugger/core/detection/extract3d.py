"""``mldbg extract --task detection3d``: a 3D detector's kept boxes, their features and the
ground truth of point-cloud frames into the store.

Frames are read in worker processes (``lidar.load_points``: NaN points and points outside
``pc_range`` dropped), passed to the detector as a list of ``[N_i, 4+]`` point tensors, and its
candidates ``[N, 7]`` go through mldbg's post-processing with rotated BEV NMS
(``adapter.postprocess(box_dim=7)``). Each kept box also records how many of the frame's points
lie inside it. Batches are committed by the same writer as 2D detection, so an interrupted
extraction resumes where it stopped; a frame that cannot be read (a ``.bin`` whose size is not a
multiple of 16 bytes, no point left inside ``pc_range``) is skipped with its reason.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from ml_debugger.core.datasets import read_classes_file
from ml_debugger.core.detection.adapter import Detections, output_dims, postprocess
from ml_debugger.core.detection.extract import (
    BoxRequest,
    DetectionSummary,
    _cpu,
    _Writer,
    box_columns,
    drive,
    load_detector,
    run_classes,
    run_info,
    sample_columns,
    skipped_rows,
    tables,
)
from ml_debugger.core.detection.lidar import FrameDataset, load_points, open_frames
from ml_debugger.core.detection.rotated import bev_extent, points_in_boxes
from ml_debugger.core.extract import ProgressFn, default_workers
from ml_debugger.core.models import resolve_device
from ml_debugger.core.store import resolve_db_path
from ml_debugger.errors import DatasetError, UsageError

TASK = "detection3d"
BOX7 = ("x", "y", "z", "dx", "dy", "dz", "yaw")


@dataclass(frozen=True)
class Detection3DRequest(BoxRequest):
    # dataset_format: kitti | npy (None: guessed from the folder)
    score_thresh: float = 0.1
    max_detections: int = 200
    batch_size: int = 8
    pc_range: tuple[float, ...] | None = None  # None: the model's ``pc_range`` attribute, if any

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pc_range is not None:
            check_pc_range(self.pc_range)


def check_pc_range(pc_range: Any) -> tuple[float, ...]:
    values = tuple(float(v) for v in pc_range)
    if len(values) != 6 or any(values[i] >= values[i + 3] for i in range(3)):
        raise UsageError(
            f"--pc-range {list(values)} must be 6 numbers x_min y_min z_min x_max y_max z_max, each min below its max"
        )
    return values


class _Points(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, paths: list[str], pc_range: tuple[float, ...] | None) -> None:
        self.paths, self.pc_range = paths, pc_range

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            pts, _ = load_points(self.paths[i], self.pc_range)
        except DatasetError as err:
            return i, None, str(err)
        except Exception as err:  # an unreadable file is recorded, never fatal
            return i, None, f"{type(err).__name__}: {str(err).strip()[:250]}"
        if len(pts) == 0:
            where = f"inside pc_range {list(self.pc_range)}" if self.pc_range else "that is a finite number"
            return i, None, f"no point {where}; check the frame or --pc-range"
        return i, pts, None


def _collate(items: list[tuple[int, np.ndarray | None, str | None]]) -> tuple[list[int], list[np.ndarray], list]:
    ok = [(i, p) for i, p, _ in items if p is not None]
    failed = [(i, e or "unreadable") for i, p, e in items if p is None]
    return [i for i, _ in ok], [p for _, p in ok], failed


def columns3d(ids: list[str], paths: list[str], points: list[np.ndarray], dets: list[Detections]) -> dict[str, Any]:
    """Columns of one batch of frames (``tables`` makes the rows): samples, frames (``images``
    rows), boxes and features."""
    cols = box_columns(dets)
    box7 = cols["boxes"].reshape(-1, 7)
    extent = bev_extent(box7).astype(np.float32)
    inside = [points_in_boxes(p, d.boxes) for p, d in zip(points, dets, strict=True)]
    return {
        "samples": sample_columns(ids, paths),
        "images": {"sample_id": ids, "n_boxes": np.array([len(d.index) for d in dets], dtype=np.int32),
                   "n_points": np.array([len(p) for p in points], dtype=np.int32)},
        "boxes": {"sample_id": [ids[i] for i in cols["sample_index"]], "box": cols["box"].astype(np.int32),
                  **{c: extent[:, j] for j, c in enumerate(("x1", "y1", "x2", "y2"))}, **cols["columns"],
                  **{c: box7[:, j].astype(np.float32) for j, c in enumerate(BOX7)},
                  "n_points": (torch.cat(inside).numpy() if inside else np.zeros(0)).astype(np.int32)},
        "features": cols["features"],
    }  # fmt: skip


def frames3d(ids: list[str], paths: list[str], points: list[np.ndarray], dets: list[Detections]) -> dict[str, Any]:
    """Rows of one batch of frames: samples, frames (``images`` rows), boxes and features."""
    return tables([columns3d(ids, paths, points, dets)])


def gt_frame(boxes: pl.DataFrame) -> pl.DataFrame:
    """A dataset's 3D ground truth (``lidar.BOX3D_SCHEMA``) as ``gt_boxes`` rows: the 7 numbers,
    their BEV extent as x1..y2, never crowd."""
    extent = bev_extent(boxes.select(BOX7).to_numpy()).astype(np.float32)
    return boxes.with_columns(
        *(pl.Series(c, extent[:, j]) for j, c in enumerate(("x1", "y1", "x2", "y2"))), pl.lit(False).alias("crowd")
    )


def model_pc_range(model: Any, given: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """``given``, else the detector's own ``pc_range`` attribute (as OpenPCDet models carry), else None."""
    if given is not None:
        return check_pc_range(given)
    own = getattr(model, "pc_range", None)
    return check_pc_range(own) if own is not None else None


def _probe(model: Any, ds: FrameDataset, pc_range: tuple[float, ...] | None, device: torch.device) -> tuple[int, int]:
    """(number of classes, feature width) from the first readable frame; the protocol is checked."""
    reader = _Points(ds.paths[:16], pc_range)
    for i in range(len(reader)):
        _, pts, _ = reader[i]
        if pts is None:
            continue
        with torch.no_grad():
            out = model([torch.from_numpy(pts).to(device)])
        return output_dims(out, box_dim=7)
    raise DatasetError(f"none of the first frames in {ds.root} could be read: {reader[0][2]}")


def extract_frames(
    req: Detection3DRequest, *, db: str | os.PathLike[str] | None = None, progress: ProgressFn | None = None
) -> DetectionSummary:
    """Run a 3D detector over the frames of ``req.dataset`` into ``db``; resumable."""
    t0 = time.perf_counter()
    db_path = resolve_db_path(db)
    classes = read_classes_file(req.classes_file) if req.classes_file else None
    ds = open_frames(req.dataset, format=req.dataset_format, classes=classes)
    device = resolve_device(req.device)
    model, fmt, sha = load_detector(req.model, weights=req.weights, device=device)
    pc_range = model_pc_range(model, req.pc_range)
    n_cls, dim = _probe(model, ds, pc_range, device)
    settings = {
        "pc_range": list(pc_range) if pc_range else None,
        "score_thresh": req.score_thresh,
        "iou_thresh": req.iou_thresh,
        "max_detections": req.max_detections,
    }
    classes_run = run_classes(ds.classes, n_cls)
    info = run_info(req, TASK, ds.root, ds.format, ds.labelled, len(ds), fmt, sha, dim, classes_run, settings)

    def batches(todo: list[int], writer: _Writer, total: int) -> int:
        return _run_batches(req, model, device, ds, pc_range, todo, writer, progress, total, n_cls)

    gt = gt_frame(ds.boxes) if ds.labelled else None
    return drive(req, db_path, info, ds.sample_ids, gt, batches, progress, ds.notes, t0)


def detect(model: Any, points: list[torch.Tensor], n_cls: int, *, score_thresh: float, iou_thresh: float,
           max_detections: int) -> tuple[Any, list[Detections]]:  # fmt: skip
    """The model's raw output on a batch of frames and mldbg's kept boxes (on the CPU)."""
    with torch.no_grad():
        out = model(points)
    dets = postprocess(
        out, len(points), score_thresh=score_thresh, iou_thresh=iou_thresh, max_detections=max_detections,
        n_classes=n_cls, box_dim=7,
    )  # fmt: skip
    return out, [_cpu(d) for d in dets]


# The whole loop in inference mode, as users' own loops run: the decoded batches are then
# inference tensors too, and every op after the forward pass skips autograd's bookkeeping
# (4-5% of a small CNN's classification extraction, measured side by side).
@torch.inference_mode()
def _run_batches(req: Detection3DRequest, model: Any, device: torch.device, ds: FrameDataset,
                 pc_range: tuple[float, ...] | None, todo: list[int], writer: _Writer,
                 progress: ProgressFn | None, total: int, n_cls: int) -> int:  # fmt: skip
    loader = torch.utils.data.DataLoader(
        _Points([ds.paths[i] for i in todo], pc_range),
        batch_size=req.batch_size,
        num_workers=default_workers() if req.workers is None else req.workers,
        collate_fn=_collate,
    )
    done, n_new = total - len(todo), 0
    for local, points, failed in loader:
        rows = [todo[i] for i in local]
        frames: dict[str, Any] = {}
        if rows:
            _, dets = detect(
                model, [torch.from_numpy(p).to(device) for p in points], n_cls, score_thresh=req.score_thresh,
                iou_thresh=req.iou_thresh, max_detections=req.max_detections,
            )  # fmt: skip
            frames = columns3d([ds.sample_ids[i] for i in rows], [ds.paths[i] for i in rows], points, dets)
            n_new += len(rows)
        if failed:
            frames["skipped"] = skipped_rows(ds.sample_ids, ds.paths, todo, failed)
        writer.add(frames)  # type: ignore[arg-type]
        done += len(rows) + len(failed)
        if progress:
            progress(done, total)
    return n_new
