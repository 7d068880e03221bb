"""``mldbg extract --task detection``: a detector's kept boxes, their features and the ground
truth into the store.

Images are decoded in worker processes (optionally resized to ``image_size`` square; by default
kept at their size and zero-padded to the largest in the batch, top-left, so coordinates do not
move), run through the detector, post-processed by mldbg (``adapter.postprocess``), scaled back
to each image's own pixels, and committed batch by batch by a background writer, as the
classification extraction does: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from ml_debugger import __version__
from ml_debugger.core.datasets import read_classes_file
from ml_debugger.core.detection.adapter import Detections, output_dims, postprocess
from ml_debugger.core.detection.datasets import DetectionDataset, open_detection_dataset
from ml_debugger.core.extract import (
    ProgressFn,
    _default_model_name,
    _fingerprint,
    _open_run,
    check_run_name,
    default_workers,
)
from ml_debugger.core.images import decode
from ml_debugger.core.models import _load_factory, file_sha256, is_factory_spec, resolve_device
from ml_debugger.core.store import RunInfo, Store, resolve_db_path
from ml_debugger.core.writer import BatchWriter
from ml_debugger.errors import DatasetError, Interrupted, ModelError, UsageError

log = logging.getLogger(__name__)
TASK = "detection"


@dataclass(frozen=True)
class BoxRequest:
    """What a 2D and a 3D detection extraction both need (the post-processing defaults differ)."""

    dataset: str
    name: str
    model: str
    weights: str | None = None
    model_name: str | None = None
    model_version: str = "v1"
    dataset_format: str | None = None
    classes_file: str | None = None
    score_thresh: float = 0.05
    iou_thresh: float = 0.5
    max_detections: int = 100
    device: str = "auto"
    batch_size: int = 16
    workers: int | None = None
    overwrite: bool = False
    flush_seconds: float = 2.0

    def __post_init__(self) -> None:
        check_run_name(self.name)
        if not 0.0 <= self.score_thresh < 1.0:
            raise UsageError(f"--score-thresh {self.score_thresh} must be in [0, 1)")
        if not 0.0 < self.iou_thresh <= 1.0:
            raise UsageError(f"--iou-thresh {self.iou_thresh} must be in (0, 1]")
        if self.max_detections < 1 or self.batch_size < 1:
            raise UsageError("--max-detections and --batch-size must be at least 1")


@dataclass(frozen=True)
class DetectionRequest(BoxRequest):
    annotations: str | None = None
    image_size: int | None = None  # None: each image at its own size
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class DetectionSummary:
    run: str
    db: str
    status: str
    n_total: int
    n_samples: int
    n_skipped: int
    n_new: int
    n_boxes: int
    n_gt_boxes: int
    resumed: bool
    seconds: float
    labelled: bool
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_detector(spec: str, *, weights: str | None, device: torch.device) -> tuple[Any, str, str]:
    """(callable, format, sha256) for a ``.pt2``, TorchScript file or ``package.module:callable``."""
    if is_factory_spec(spec):
        module, sha = _load_factory(spec, weights, device)
        return module, "factory", sha
    path = Path(spec)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; pass a .pt2, TorchScript file or package.module:callable")
    sha = file_sha256(path)
    try:
        if path.suffix.lower() in (".pt2", ".ep"):
            return torch.export.load(str(path)).module().to(device), "export", sha
        module = torch.jit.load(str(path), map_location=device)
        return module.eval(), "torchscript", sha
    except Exception as err:
        raise ModelError(f"cannot load detector {path} ({type(err).__name__}: {err})") from None


class _Images(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, paths: list[str], size: int | None, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.paths, self.size = paths, size
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, tuple[int, int], str | None]:
        try:
            img = decode(self.paths[i], 3)
        except Exception as err:  # an undecodable file is recorded, never fatal
            return i, None, (0, 0), f"{type(err).__name__}: {str(err).strip()[:250]}"
        h, w = img.shape[1:]
        if self.size is not None and (h, w) != (self.size, self.size):
            img = F.interpolate(img[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        return i, ((img - self.mean) / self.std).numpy(), (w, h), None


def _collate(items: list[tuple[int, Any, tuple[int, int], str | None]]) -> tuple[Any, ...]:
    ok = [(i, x, wh) for i, x, wh, e in items if x is not None]
    failed = [(i, e or "unreadable") for i, x, _, e in items if x is None]
    if not ok:
        return [], None, [], failed
    h = max(x.shape[1] for _, x, _ in ok)
    w = max(x.shape[2] for _, x, _ in ok)
    batch = np.zeros((len(ok), 3, h, w), dtype=np.float32)
    for k, (_, x, _) in enumerate(ok):
        batch[k, :, : x.shape[1], : x.shape[2]] = x
    return [i for i, _, _ in ok], batch, [wh for _, _, wh in ok], failed


def box_columns(dets: list[Detections]) -> dict[str, Any]:
    """The columns every kept box has, 2D or 3D (label, score, probs, entropy, margin, overlap
    signals), the boxes ``[K, box_dim]`` and features of one batch, in order."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "score", "probs", "n", "ciou", "other", "boxes")}
    for d in dets:
        for key, t in (("label", d.labels), ("score", d.scores), ("probs", d.probs), ("n", d.n_candidates),
                       ("ciou", d.candidate_iou), ("other", d.max_iou_other), ("boxes", d.boxes)):  # fmt: skip
            parts[key].append(t.numpy())
    n_cls = dets[0].probs.shape[1] if dets else 0
    box_dim = dets[0].boxes.shape[1] if dets else 4
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    probs = cat["probs"].reshape(-1, n_cls).astype(np.float32)
    dist = probs / np.maximum(probs.sum(1, keepdims=True), 1e-12)
    entropy = -(dist * np.log(np.clip(dist, 1e-12, None))).sum(1)
    top2 = np.sort(probs, 1)[:, -2:] if n_cls > 1 else np.concatenate([np.zeros_like(probs), probs], 1)
    feats = [d.features.numpy() for d in dets]
    return {
        "sample_index": np.concatenate([np.full(len(d.index), i) for i, d in enumerate(dets)]).astype(np.int64)
        if dets
        else np.zeros(0, dtype=np.int64),
        "box": np.concatenate([np.arange(len(d.index)) for d in dets]).astype(np.int32) if dets else np.zeros(0),
        "boxes": cat["boxes"].reshape(-1, box_dim).astype(np.float32),
        "columns": {
            "label": cat["label"].astype(np.int32),
            "score": cat["score"].astype(np.float32),
            "probs": probs,
            "entropy": entropy.astype(np.float32),
            "margin": (top2[:, 1] - top2[:, 0]).astype(np.float32),
            "n_candidates": cat["n"].astype(np.int32),
            "candidate_iou": cat["ciou"].astype(np.float32),
            "max_iou_other": cat["other"].astype(np.float32),
        },
        "features": np.concatenate(feats).astype(np.float32) if feats else None,
    }


def _columns(ids: list[str], paths: list[str], sizes: list[tuple[int, int]], dets: list[Detections],
             scale: list[tuple[float, float]]) -> dict[str, Any]:  # fmt: skip
    """Columns of one batch (``tables`` makes the rows): samples, images, boxes (in each image's
    own pixels) and features."""
    cols = box_columns(dets)
    at = cols["sample_index"]
    wh = np.array(sizes, dtype=np.float32).reshape(-1, 2)[at]
    sxy = np.array(scale, dtype=np.float32).reshape(-1, 2)[at]
    xyxy = np.clip(cols["boxes"] * np.tile(sxy, 2), 0, np.tile(wh, 2))
    size = np.array(sizes, dtype=np.int32).reshape(-1, 2)
    return {
        "samples": sample_columns(ids, paths),
        "images": {"sample_id": ids, "width": size[:, 0], "height": size[:, 1],
                   "n_boxes": np.array([len(d.index) for d in dets], dtype=np.int32)},
        "boxes": {"sample_id": [ids[i] for i in at], "box": cols["box"].astype(np.int32),
                  **{c: xyxy[:, j] for j, c in enumerate(("x1", "y1", "x2", "y2"))}, **cols["columns"]},
        "features": cols["features"],
    }  # fmt: skip


def _frames(ids: list[str], paths: list[str], sizes: list[tuple[int, int]], dets: list[Detections],
            scale: list[tuple[float, float]]) -> dict[str, Any]:  # fmt: skip
    """Rows of one batch: samples, images, boxes (in each image's own pixels) and features."""
    return tables([_columns(ids, paths, sizes, dets, scale)])


def sample_columns(ids: list[str], paths: list[str]) -> dict[str, Any]:
    """``samples`` columns of unlabelled inputs (detection labels live in ``gt_boxes``)."""
    return {"sample_id": ids, "path": paths, "label": pl.Series("label", [None] * len(ids), dtype=pl.Int32)}


TABLES = ("samples", "images", "boxes", "skipped")


def tables(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows of several batches' columns, one frame per table (built once per commit, not per
    batch): NumPy columns are concatenated, 2D ones become list columns (``probs``), lists are
    string columns, Polars series are stacked, and so are tables already given as frames."""
    out: dict[str, Any] = {}
    for key in TABLES:
        parts = [b[key] for b in batches if b.get(key) is not None]
        if not parts or isinstance(parts[0], pl.DataFrame):
            out[key] = pl.concat(parts) if parts else None
            continue
        data: dict[str, Any] = {}
        for col in parts[0]:
            values = [p[col] for p in parts]
            if isinstance(values[0], pl.Series):
                data[col] = pl.concat(values)
            elif not isinstance(values[0], np.ndarray):
                data[col] = pl.Series(col, [v for part in values for v in part], dtype=pl.String)
            elif values[0].ndim == 2:
                joined = np.concatenate(values)
                width = max(joined.shape[1], 1)
                data[col] = pl.Series(col, joined, dtype=pl.Array(pl.Float32, width)).cast(pl.List(pl.Float32))
            else:
                data[col] = np.concatenate(values)
        out[key] = pl.DataFrame(data)
    feats = [b["features"] for b in batches if b.get("features") is not None and len(b["features"])]
    out["features"] = np.concatenate(feats) if feats else None
    return out


class _Writer(BatchWriter):
    """The classification writer's thread and timing, committing detection frames."""

    def _own(self, item: Any) -> Any:
        """The batch's NumPy columns copied into this thread's memory (see ``writer.own_raw``)."""
        return {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}

    def _commit(self, pending: list[Any]) -> None:
        merged = tables(pending)
        with Store(self.db, settings=self.settings(merged)) as store:
            store.write_detection_batch(self.run, **merged)
        self.committed += sum(merged[k].height for k in ("samples", "skipped") if merged.get(k) is not None)


def _run_info(req: DetectionRequest, ds: DetectionDataset, fmt: str, sha: str, dim: int, classes: list[str]) -> RunInfo:
    settings = {
        "preprocess": {"image_size": req.image_size, "mean": list(req.mean), "std": list(req.std)},
        "score_thresh": req.score_thresh,
        "iou_thresh": req.iou_thresh,
        "max_detections": req.max_detections,
        "annotations": str(Path(req.annotations).resolve()) if req.annotations else None,
    }
    return run_info(req, TASK, ds.root, ds.format, ds.labelled, len(ds), fmt, sha, dim, classes, settings)


def run_info(req: Any, task: str, root: Path, dataset_format: str, labelled: bool, n: int, fmt: str, sha: str,
             dim: int, classes: list[str], settings: dict[str, Any]) -> RunInfo:  # fmt: skip
    """The ``runs`` row of a detection extraction (2D or 3D), fingerprinted for resuming."""
    settings = {**settings, "weights": str(Path(req.weights).resolve()) if req.weights else None}
    root_s = str(Path(root).resolve())
    return RunInfo(
        name=req.name,
        task=task,
        model_name=req.model_name or _default_model_name(req.model),
        model_version=req.model_version,
        model_path=req.model if fmt == "factory" else str(Path(req.model).resolve()),
        model_format=fmt,
        model_sha256=sha,
        dataset_path=root_s,
        dataset_format=dataset_format,
        labelled=labelled,
        classes=classes,
        feature_layer="adapter features",
        feature_dim=dim,
        stability_k=0,
        settings=settings,
        fingerprint=_fingerprint(
            {"task": task, "model": sha, "dataset": root_s, "format": dataset_format, "classes": classes,
             "settings": settings}
        ),
        n_expected=n,
        mldbg_version=__version__,
    )  # fmt: skip


def _probe(model: Any, ds: DetectionDataset, req: DetectionRequest, device: torch.device) -> tuple[int, int]:
    """(number of classes, feature width) from the first decodable image; the protocol is checked."""
    loader = _Images(ds.paths[:16], req.image_size, req.mean, req.std)
    for i in range(len(loader)):
        _, x, _, _ = loader[i]
        if x is None:
            continue
        with torch.no_grad():
            out = model(torch.from_numpy(x)[None].to(device))
        return output_dims(out)
    raise DatasetError(f"none of the first images in {ds.root} could be decoded; check that the files are images")


def extract_detections(
    req: DetectionRequest, *, db: str | os.PathLike[str] | None = None, progress: ProgressFn | None = None
) -> DetectionSummary:
    """Run a detector over ``req.dataset`` into ``db``; resumable like the classification extraction."""
    t0 = time.perf_counter()
    db_path = resolve_db_path(db)
    classes = read_classes_file(req.classes_file) if req.classes_file else None
    ds = open_detection_dataset(req.dataset, format=req.dataset_format, annotations=req.annotations, classes=classes)
    device = resolve_device(req.device)
    model, fmt, sha = load_detector(req.model, weights=req.weights, device=device)
    n_cls, dim = _probe(model, ds, req, device)
    info = _run_info(req, ds, fmt, sha, dim, run_classes(ds.classes, n_cls))

    def batches(todo: list[int], writer: _Writer, total: int) -> int:
        return _run_batches(req, model, device, ds, todo, writer, progress, total, n_cls)

    return drive(req, db_path, info, ds.sample_ids, ds.boxes if ds.labelled else None, batches, progress, ds.notes, t0)


def run_classes(names: list[str], n_cls: int) -> list[str]:
    """The run's class names: the dataset's, or indices when it has none; they must match the model."""
    out = names or [str(i) for i in range(n_cls)]
    if len(out) != n_cls:
        raise ModelError(
            f"the detector scores {n_cls} classes but the dataset gives {len(out)} ({out[:5]}); "
            f"pass --classes FILE listing all {n_cls} class names in the model's order"
        )
    return out


def drive(req: Any, db_path: Path, info: RunInfo, sample_ids: list[str], gt: pl.DataFrame | None,
          batches: Any, progress: ProgressFn | None, notes: list[str], t0: float) -> DetectionSummary:  # fmt: skip
    """Open (or resume) the run, write its ground truth, run ``batches(todo, writer, total)`` over
    the samples not stored yet, finish the run; what 2D and 3D extraction share."""
    with Store(db_path) as store:
        run, resumed = _open_run(store, req, info)
        if not resumed and gt is not None:
            store.write_gt_boxes(req.name, gt)
        done = store.done_sample_ids(req.name)
    todo = [i for i, sid in enumerate(sample_ids) if sid not in done]
    total, n_new = len(sample_ids), 0
    if progress:
        progress(total - len(todo), total)
    writer = _Writer(db_path, req.name, req.flush_seconds)
    try:
        if todo:
            n_new = batches(todo, writer, total)
        writer.close()
        with Store(db_path) as store:
            store.update_run(req.name, status="complete", finished=datetime.now(), n_expected=total)
            counts = {t: store.count(t, req.name) for t in ("samples", "skipped", "boxes", "gt_boxes")}
    except KeyboardInterrupt:
        writer.close()
        raise Interrupted(
            f"interrupted: {len(done) + writer.committed:,} of {total:,} {'frames' if info.task != TASK else 'images'}"
            f" of run {req.name!r} are saved in {db_path}; run the same command again to resume"
        ) from None
    except BaseException:
        writer.close_after_error()
        raise
    return DetectionSummary(
        run=req.name, db=str(db_path), status="complete" if todo else "up-to-date", n_total=total,
        n_samples=counts["samples"], n_skipped=counts["skipped"], n_new=n_new, n_boxes=counts["boxes"],
        n_gt_boxes=counts["gt_boxes"], resumed=resumed, seconds=round(time.perf_counter() - t0, 3),
        labelled=run.labelled, notes=notes,
    )  # fmt: skip


# The whole loop in inference mode, as users' own loops run: the decoded batches are then
# inference tensors too, and every op after the forward pass skips autograd's bookkeeping
# (4-5% of a small CNN's classification extraction, measured side by side).
@torch.inference_mode()
def _run_batches(req: DetectionRequest, model: Any, device: torch.device, ds: DetectionDataset, todo: list[int],
                 writer: _Writer, progress: ProgressFn | None, total: int, n_cls: int) -> int:  # fmt: skip
    loader = torch.utils.data.DataLoader(
        _Images([ds.paths[i] for i in todo], req.image_size, req.mean, req.std),
        batch_size=req.batch_size,
        num_workers=default_workers() if req.workers is None else req.workers,
        collate_fn=_collate,
    )
    done, n_new = total - len(todo), 0
    for local, x, sizes, failed in loader:
        rows = [todo[i] for i in local]
        frames: dict[str, Any] = {}
        if rows:
            with torch.no_grad():
                out = model(torch.from_numpy(x).to(device))
            dets = postprocess(
                out, len(rows), score_thresh=req.score_thresh, iou_thresh=req.iou_thresh,
                max_detections=req.max_detections, n_classes=n_cls,
            )  # fmt: skip
            dets = [_cpu(d) for d in dets]
            scale = [(w / x.shape[3], h / x.shape[2]) if req.image_size else (1.0, 1.0) for w, h in sizes]
            frames = _columns([ds.sample_ids[i] for i in rows], [ds.paths[i] for i in rows], sizes, dets, scale)
            n_new += len(rows)
        if failed:
            frames["skipped"] = skipped_rows(ds.sample_ids, ds.paths, todo, failed)
        writer.add(frames)  # type: ignore[arg-type]
        done += len(rows) + len(failed)
        if progress:
            progress(done, total)
    return n_new


def skipped_rows(
    sample_ids: list[str], paths: list[str], todo: list[int], failed: list[tuple[int, str]]
) -> pl.DataFrame:
    """``skipped`` rows for the inputs of a batch that could not be read (logged as warnings)."""
    rows = [(sample_ids[todo[i]], paths[todo[i]], reason) for i, reason in failed]
    for _, path, reason in rows:
        log.warning("skipped %s: %s", path, reason)
    return pl.DataFrame(rows, schema=["sample_id", "path", "reason"], orient="row")


def _cpu(d: Detections) -> Detections:
    return Detections(*(t.detach().cpu() for t in d.__dict__.values()))
