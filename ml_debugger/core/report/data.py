"""What a report is about: a result, the run it describes, and that run's scored rows.

``load`` resolves the names the user gave (a result, a run, both or neither) the way ``query``
does, and says which command to run when the run has no scores yet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from ml_debugger.core.detection import DETECTION_TASKS
from ml_debugger.core.store import ResultInfo, RunInfo, Store
from ml_debugger.errors import UsageError

# What the report reads of each scored sample (no feature vectors, no probability lists).
COLUMNS = (
    "sample_id",
    "path",
    "label",
    "pred",
    "confidence",
    "entropy",
    "energy",
    "stability",
    "flip_rate",
    "error_proba",
    "ood_score",
    "zone",
    "error_code",
    "trust_score",
)


@dataclass(frozen=True)
class ReportData:
    result: ResultInfo
    run: RunInfo
    frame: pl.DataFrame  # the run's scored rows, with is_error (null where unlabelled)
    reference: pl.DataFrame  # the result's labelled run, out-of-fold (the same frame when run is it)
    out_of_fold: bool
    db_path: Path
    # Detector, zone and class metrics: the result's own (out-of-fold) for its labelled run,
    # measured here for another labelled run (held out), None for an unlabelled run.
    metrics: dict[str, Any] | None = None
    # Detection: the run's ground-truth boxes (labelled runs), for per-class AP and the gallery.
    gt: pl.DataFrame | None = None

    @property
    def task(self) -> str:
        return self.result.task

    @property
    def is_eval_run(self) -> bool:
        return self.run.name == self.result.eval_run

    @property
    def labelled(self) -> bool:
        return self.frame.height > 0 and self.frame["is_error"].null_count() == 0

    @property
    def classes(self) -> list[str]:
        return self.result.classes


def _frame(store: Store, result: str, run: str) -> pl.DataFrame:
    frame = store.scan_scores(result, run).select(COLUMNS).collect()
    return frame.with_columns(
        pl.when(pl.col("label").is_null()).then(None).otherwise(pl.col("pred") != pl.col("label")).alias("is_error")
    )


def _box_frame(store: Store, info: ResultInfo, run: str) -> pl.DataFrame:
    """A detection run's box scores as report rows: one per box, with the columns the shared
    sections read (pred, confidence = the box score, is_error from the box's code)."""
    from ml_debugger.core.detection.strategy import box_frame, box_is_error

    boxes = box_frame(store.read_box_scores(info.name, run), info.classes)
    paths = store.con.sql("SELECT sample_id, path FROM samples WHERE run = $r", params={"r": run}).pl()
    return boxes.join(paths, on="sample_id", how="left").with_columns(
        pl.col("label").alias("pred"),
        pl.col("score").alias("confidence"),
        pl.lit(None, dtype=pl.Float32).alias("stability"),
        box_is_error(),
    )


def resolve(store: Store, result: str | None, run: str | None) -> tuple[ResultInfo, RunInfo]:
    """The (result, run) pair a report is about; the run must have scores under the result."""
    if result is None and run is None:
        names = store.result_names()
        if not names:
            raise UsageError(f"no results in {store.path} yet; fit one with `mldbg evaluate LABELLED_RUN`")
        info = store.require_result(names[-1])
        return info, store.require_run(info.eval_run)
    if result is None:
        assert run is not None
        target = store.require_run(run)
        pairs = [p["result"] for p in store.scored_pairs().to_dicts() if p["run"] == run]
        if not pairs:
            raise UsageError(f"run {run!r} has no scores yet; score it first with `mldbg score {run}`")
        return store.require_result(pairs[0]), target
    info = store.require_result(result)
    target = store.require_run(run or info.eval_run)
    if store.scored_info(info.name, target.name) is None:
        raise UsageError(
            f"run {target.name!r} has no scores under result {info.name}; "
            f"score it first with `mldbg score {target.name} --result {info.name}`"
        )
    return info, target


def load(store: Store, result: str | None = None, run: str | None = None) -> ReportData:
    """Read everything a report draws for ``run`` under ``result`` (defaults: see ``resolve``)."""
    info, target = resolve(store, result, run)

    def read(name: str) -> pl.DataFrame:
        return _box_frame(store, info, name) if info.task in DETECTION_TASKS else _frame(store, info.name, name)

    frame = read(target.name)
    reference = frame if target.name == info.eval_run else read(info.eval_run)
    scored: dict[str, Any] = store.scored_info(info.name, target.name) or {}
    data = ReportData(info, target, frame, reference, bool(scored.get("out_of_fold")), Path(str(store.path)))
    if info.task in DETECTION_TASKS:
        gt = store.read_gt_boxes(target.name) if target.labelled else None
        if data.is_eval_run:
            return replace(data, metrics=info.metrics, gt=gt)
        return replace(data, metrics=detection_held_out(data.frame, gt, info) if gt is not None else None, gt=gt)
    if data.is_eval_run:
        return replace(data, metrics=info.metrics)
    if data.labelled:
        return replace(data, metrics=held_out_metrics(store, data))
    return data


def held_out_metrics(store: Store, data: ReportData) -> dict[str, Any]:
    """Error_proba beside the baselines, zones and classes measured on a labelled run other than
    the result's own: held out, since the error model never saw these labels."""
    from ml_debugger.core.errormodel import doctor_expr
    from ml_debugger.core.summary import evaluation_metrics

    probs = store.read_scores(data.result.name, data.run.name).select("sample_id", doctor_expr())
    frame = data.frame.join(probs, on="sample_id", how="left")
    cfg = data.result.config
    metrics = evaluation_metrics(
        frame,
        data.classes,
        confident=float(cfg["evaluate"]["confident"]),
        level=float(cfg["zones"]["coverage_level"]),
    )
    metrics["out_of_fold"] = False
    return metrics


def detection_held_out(frame: pl.DataFrame, gt: pl.DataFrame, info: ResultInfo) -> dict[str, Any]:
    """Error_proba beside 1 − box score, zones, mAP and codes on a labelled detection run other
    than the result's own (held out: its images never reached the error model)."""
    import numpy as np

    from ml_debugger.core.detection.evaluate import ap_inputs, label_boxes
    from ml_debugger.core.detection.matching import CODES
    from ml_debugger.core.detection.metrics import mean_ap
    from ml_debugger.core.metrics import auroc_difference, detector_metrics, ece
    from ml_debugger.core.summary import zone_table

    mode = info.model.get("iou_mode", "xyxy")
    lab = label_boxes(frame, gt, info.classes, float(info.model.get("iou", 0.5)), mode)
    keep = ~lab.ignored
    f = frame.filter(pl.Series(keep))
    y = ~lab.tp[keep]
    score = f["score"].to_numpy().astype(np.float64)
    ep = f["error_proba"].to_numpy().astype(np.float64)
    confident = score >= float(info.config["evaluate"]["confident"])
    dets = {
        "error_proba": detector_metrics(y, ep, confident),
        "one_minus_score": detector_metrics(y, 1.0 - score, confident),
        "entropy": detector_metrics(y, f["entropy"].to_numpy().astype(np.float64), confident),
    }
    args, geom = ap_inputs(frame, gt, mode)
    ap = mean_ap(*args, geometry=geom)
    return {
        "samples": len(y),
        "unit": "boxes",
        "errors": int(y.sum()),
        "images": int(frame["sample_id"].n_unique()),
        "precision": float(1 - y.mean()) if len(y) else None,
        "confident_threshold": float(info.config["evaluate"]["confident"]),
        "detectors": dets,
        "best_baseline": {
            "name": "one_minus_score",
            "auroc": dets["one_minus_score"]["auroc"],
            "versus": auroc_difference(y, ep, 1.0 - score),
        },
        "ece": ece(y, ep),
        "zones": zone_table(f.with_columns(pl.Series("is_error", y))),
        "codes": {c: int((lab.code == c).sum()) for c in CODES},
        "missed": lab.missed,
        "map50": ap["map50"],
        "map": ap["map"],
        "out_of_fold": False,
    }
