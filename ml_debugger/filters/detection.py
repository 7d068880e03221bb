"""``ObjectDetectionDataFilter`` and ``ObjectDetection3DDataFilter``: flag images (or LiDAR
frames) in real time from a detector's boxes.

Each call runs your detector once and returns its output unchanged; mldbg post-processes the
candidates (score threshold, per-class NMS, top-k: the adapter protocol), scores every kept box
with a fitted detection result (the code ``mldbg score`` runs, so the numbers are the same),
and turns the boxes into one flag per image with a ``BBoxStrategy`` (the code ``mldbg query``
runs). Calls are serialised (a lock), so one filter may be shared by threads.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from ml_debugger.core.detection.adapter import Detections, postprocess
from ml_debugger.core.detection.evaluate import load_box_bank, score_box_frame
from ml_debugger.core.detection.extract import _cpu
from ml_debugger.core.detection.strategy import BBoxStrategy, box_frame
from ml_debugger.core.store import Store
from ml_debugger.errors import UsageError
from ml_debugger.filters.classification import find_result

TASK = "detection"
# What ``last`` (one row per kept box) and ``last_images`` (one row per input) hold.
LAST_COLUMNS = ("input_ids", "box", "x1", "y1", "x2", "y2", "predicted", "score", "error_proba", "det_error_proba",
                "cls_error_proba", "ood_score", "zone")  # fmt: skip
LAST_COLUMNS_3D = ("input_ids", "box", "x", "y", "z", "dx", "dy", "dz", "yaw", "n_points", "predicted", "score",
                   "error_proba", "det_error_proba", "cls_error_proba", "ood_score", "zone")  # fmt: skip


class _BoxFilter:
    """What the 2D and 3D filters share: the result and its box bank, read once; scoring the
    kept boxes; the BBoxStrategy flags; ``query``. Subclasses run the detector (``_detect``)."""

    task = TASK
    unit = "image"
    columns: tuple[str, ...] = LAST_COLUMNS

    def __init__(self, model: Any, model_name: str, version_name: str, result_name: str | None,
                 filter_config: BBoxStrategy | dict[str, Any] | None, n_class: int | None, score_thresh: float,
                 iou_thresh: float, max_detections: int, db: str | Path | None,
                 device: str | torch.device | None) -> None:  # fmt: skip
        self.strategy = BBoxStrategy.from_value(filter_config)
        self.flagging = filter_config is not None and self.strategy.img_error_threshold is not None
        self.model = model.to(device) if device is not None and hasattr(model, "to") else model
        self.model_name, self.version_name, self.db = model_name, version_name, db
        self.score_thresh, self.iou_thresh, self.max_detections = score_thresh, iou_thresh, max_detections
        with Store(db, read_only=True) as store:
            self.result = find_result(store, self.task, model_name, version_name, result_name)
            self.bank = load_box_bank(store, self.result)
        if n_class is not None and n_class != len(self.result.classes):
            raise UsageError(f"n_class={n_class}, but result {self.result.name} has {len(self.result.classes)} classes")
        self.n_class = len(self.result.classes)
        self.last = pl.DataFrame()
        self.last_images = pl.DataFrame()
        self._count = itertools.count()
        self._lock = threading.Lock()

    def _detect(self, inputs: Any, ids: list[str]) -> tuple[Any, pl.DataFrame, np.ndarray]:
        raise NotImplementedError

    def _ids(self, input_ids: list[Any] | None, b: int) -> list[str]:
        ids = [str(i) for i in input_ids] if input_ids is not None else [f"input-{next(self._count)}" for _ in range(b)]
        if len(ids) != b:
            raise UsageError(f"input_ids has {len(ids)} ids for a batch of {b} {self.unit}s")
        return ids

    def _flags(self, inputs: Any, b: int, input_ids: list[Any] | None) -> tuple[Any, list[bool | None]]:
        with self._lock, torch.no_grad():
            ids = self._ids(input_ids, b)
            output, boxes, feats = self._detect(inputs, ids)
            scored = score_box_frame(boxes, feats, self.result, self.bank)
            scored = box_frame(scored, self.result.classes)
            per_image = self.strategy.image_scores(scored, pl.Series(ids))
            self.last = scored.rename({"sample_id": "input_ids"}).select(self.columns)
            order = {s: i for i, s in enumerate(ids)}
            self.last_images = per_image.rename({"sample_id": "input_ids"}).sort(
                pl.col("input_ids").replace_strict(order, return_dtype=pl.Int64)
            )
            flags = self.last_images["flag"].to_list() if self.flagging else [None] * b
        return output, flags

    def query(self, n_data: int, strategy: str | dict[str, Any] | None = None, run: str | None = None) -> list:
        """Select ``n_data`` image (frame) ids of a run with this filter's result and BBoxStrategy,
        saved as a selection (the same code as ``mldbg query``); ``strategy`` a ranking name or a
        BBoxStrategy dict (default: the filter's). ``run``: the newest run of this model version."""
        from ml_debugger.core.query import QuerySpec, run_query

        bbox = self.strategy.to_dict() if strategy is None or isinstance(strategy, str) else strategy
        spec = QuerySpec(strategy=strategy if isinstance(strategy, str) else "high_error_proba", n=n_data, bbox=bbox)
        if run is None:
            with Store(self.db, read_only=True) as store:
                runs = store.list_runs().filter(
                    (pl.col("model_name") == self.model_name)
                    & (pl.col("model_version") == self.version_name)
                    & (pl.col("task") == self.task)
                )
            if runs.height == 0:
                raise UsageError(f"no {self.task} runs of {self.model_name}/{self.version_name} to query; extract one")
            run = str(runs["name"][-1])
        return run_query(spec, db=self.db, run=run, result=self.result.name).rows["sample_id"].to_list()


class ObjectDetectionDataFilter(_BoxFilter):
    """Score each batch's boxes with a fitted detection result and flag the images worth collecting.

    Parameters
    ----------
    model
        Your detector: returns candidates per the adapter protocol (``boxes``, ``logits`` or
        ``scores``, ``features``; see ``ml_debugger.core.detection.adapter``).
    model_name, version_name
        The names its runs were extracted under.
    result_name
        A detection result; None = the newest for this model version.
    filter_config
        A ``BBoxStrategy`` or its dict (``img_error_threshold``, ``aggregation``, ``target_column``,
        ``bbox_filter``, ``top_n``, ``weight_column``, ``sort``); without ``img_error_threshold``
        every flag is None and the scores are in ``last`` / ``last_images``.
    n_class, score_thresh, iou_thresh, max_detections_per_image
        The post-processing mldbg applies to the candidates (as ``extract --task detection``).
    db, device
        The mldbg database (read once); where to move the model (default: leave it).

    Example
    -------
    >>> f = ObjectDetectionDataFilter(model, model_name="tinydet", version_name="v1",  # doctest: +SKIP
    ...     filter_config={"img_error_threshold": 0.5, "aggregation": "max"})
    >>> output, flags = f(images, input_ids=ids)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module | Any,
        model_name: str,
        version_name: str,
        result_name: str | None = None,
        filter_config: BBoxStrategy | dict[str, Any] | None = None,
        n_class: int | None = None,
        score_thresh: float = 0.05,
        iou_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        db: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(model, model_name, version_name, result_name, filter_config, n_class, score_thresh,
                         iou_thresh, max_detections_per_image, db, device)  # fmt: skip

    def __call__(self, images: torch.Tensor, input_ids: list[Any] | None = None) -> tuple[Any, list[bool | None]]:
        """Run the detector on ``images [B, 3, H, W]``; return its output unchanged and one flag per image."""
        return self._flags(images, images.shape[0], input_ids)

    def _detect(self, images: torch.Tensor, ids: list[str]) -> tuple[Any, pl.DataFrame, np.ndarray]:
        output = self.model(images)
        dets = postprocess(
            output, len(ids), score_thresh=self.score_thresh, iou_thresh=self.iou_thresh,
            max_detections=self.max_detections, n_classes=self.n_class,
        )  # fmt: skip
        boxes, feats = _frame(ids, dets, int(images.shape[-1]), int(images.shape[-2]))
        return output, boxes, feats


class ObjectDetection3DDataFilter(_BoxFilter):
    """Score each batch's 3D boxes with a fitted ``detection3d`` result and flag the LiDAR frames
    worth labelling.

    Parameters are those of ``ObjectDetectionDataFilter``, plus ``pc_range`` (x_min, y_min,
    z_min, x_max, y_max, z_max; default: the model's own ``pc_range`` attribute, else none):
    NaN points and points outside it are dropped before the model sees them, as
    ``mldbg extract --task detection3d`` does, so both give the same boxes and scores.
    ``max_detections_per_frame`` caps the kept boxes per frame; ``iou_thresh`` is the BEV IoU of
    the rotated NMS. ``last`` has one row per kept box (x, y, z, dx, dy, dz, yaw, n_points, ...).

    Example
    -------
    >>> f = ObjectDetection3DDataFilter(model, model_name="tinybev", version_name="v1",  # doctest: +SKIP
    ...     filter_config={"img_error_threshold": 0.5, "aggregation": "max"}, n_class=3)
    >>> output, flags = f([points_0, points_1], input_ids=["f0", "f1"])  # doctest: +SKIP
    """

    task = "detection3d"
    unit = "frame"
    columns = LAST_COLUMNS_3D

    def __init__(
        self,
        model: nn.Module | Any,
        model_name: str,
        version_name: str,
        result_name: str | None = None,
        filter_config: BBoxStrategy | dict[str, Any] | None = None,
        n_class: int | None = None,
        score_thresh: float = 0.1,
        iou_thresh: float = 0.5,
        max_detections_per_frame: int = 200,
        pc_range: list[float] | tuple[float, ...] | None = None,
        db: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        from ml_debugger.core.detection.extract3d import model_pc_range

        super().__init__(model, model_name, version_name, result_name, filter_config, n_class, score_thresh,
                         iou_thresh, max_detections_per_frame, db, device)  # fmt: skip
        self.pc_range = model_pc_range(model, tuple(pc_range) if pc_range is not None else None)

    def __call__(self, points: list[torch.Tensor], input_ids: list[Any] | None = None) -> tuple[Any, list[bool | None]]:
        """Run the detector on a list of frames ``[N_i, 4+]``; return its output unchanged and one flag per frame."""
        if isinstance(points, torch.Tensor) and points.ndim == 2:
            points = [points]
        return self._flags(list(points), len(points), input_ids)

    def _detect(self, points: list[torch.Tensor], ids: list[str]) -> tuple[Any, pl.DataFrame, np.ndarray]:
        from ml_debugger.core.detection.extract3d import detect, frames3d
        from ml_debugger.core.detection.lidar import keep_points

        kept = [p[torch.from_numpy(keep_points(p[:, :3].detach().cpu().numpy(), self.pc_range)).to(p.device)]
                for p in points]  # fmt: skip
        output, dets = detect(self.model, kept, self.n_class, score_thresh=self.score_thresh,
                              iou_thresh=self.iou_thresh, max_detections=self.max_detections)  # fmt: skip
        rows = frames3d(ids, ids, [p.detach().cpu().numpy() for p in kept], dets)
        boxes = rows["boxes"].with_columns(pl.lit(None, dtype=pl.Int32).alias("width"),
                                           pl.lit(None, dtype=pl.Int32).alias("height"))  # fmt: skip
        feats = rows["features"] if rows["features"] is not None else np.zeros((0, 1), dtype=np.float32)
        return output, boxes, feats


def _frame(ids: list[str], dets: list[Detections], width: int, height: int) -> tuple[pl.DataFrame, np.ndarray]:
    """The batch's kept boxes as ``Store.read_boxes`` rows (the input's size as the image size),
    built by the extraction's own function, and their features."""
    from ml_debugger.core.detection.extract import _frames

    rows = _frames(ids, ids, [(width, height)] * len(ids), [_cpu(d) for d in dets], [(1.0, 1.0)] * len(ids))
    boxes = rows["boxes"].with_columns(pl.lit(width, dtype=pl.Int32).alias("width"),
                                       pl.lit(height, dtype=pl.Int32).alias("height"))  # fmt: skip
    feats = rows["features"] if rows["features"] is not None else np.zeros((0, 1), dtype=np.float32)
    return boxes, feats
