"""``mldbg evaluate`` for detection runs: a per-box error model, zones and metrics; and scoring
other runs with it.

On the labelled run: COCO matching → a code per box (``matching``) → targets per box:
``error_proba`` = P(not a true positive), ``det_error_proba`` = P(code ≠ A: mislocalised,
duplicate, split, merged or background), ``cls_error_proba`` = P(class ≠ its ground truth's, for
boxes that have one) → signals (``errormodel``) → three L2 logistic models, cross-fitted with
whole images per fold (boxes of one image never straddle train and test) and Platt-calibrated
→ zones per box, with the classification rules (confidence = the box score; no stability) and
the calibrated stable_coverage promise → metrics beside the free baseline 1 − score, and mAP.
Boxes matched to a crowd region are neither right nor wrong, as in COCO: left out of fitting
and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ml_debugger import __version__
from ml_debugger.core.config import load_config
from ml_debugger.core.detection import errormodel as em
from ml_debugger.core.detection.boxes import AXIS_ALIGNED, Geometry
from ml_debugger.core.detection.matching import CODES, codes, error_codes, match
from ml_debugger.core.detection.metrics import mean_ap
from ml_debugger.core.errormodel import ErrorModel, cross_fit
from ml_debugger.core.metrics import auroc_difference, detector_metrics, ece
from ml_debugger.core.store import ResultInfo, RunInfo, Store
from ml_debugger.core.summary import zone_table
from ml_debugger.core.zones import ZoneRules, assign, calibrate_stable, parse_rules
from ml_debugger.errors import UsageError

TASK = "detection"
METHOD = "detection_v1"
TARGETS = ("error_proba", "det_error_proba", "cls_error_proba")
BOX7 = ("x", "y", "z", "dx", "dy", "dz", "yaw")


@dataclass(frozen=True)
class BoxTask:
    """What differs between 2D and 3D detection results: the result tag and method, the box
    columns, the signals, and the geometry of matching (``xyxy``; ``bev`` or ``3d`` IoU)."""

    task: str
    tag: str
    method: str
    columns: tuple[str, ...]

    @property
    def signals(self) -> tuple[str, ...]:
        return em.signals_of(self.task)[0]

    def box_signals(self, boxes: pl.DataFrame) -> pl.DataFrame:
        return em.signals_of(self.task)[1](boxes)

    def matching(self, ev: dict[str, Any]) -> tuple[str, float]:
        """(IoU mode, threshold) from the evaluate config."""
        if self.task == TASK:
            return "xyxy", float(ev["iou_threshold"])
        mode = str(ev["iou_mode_3d"])
        if mode not in ("bev", "3d"):
            raise UsageError(f"evaluate.iou_mode_3d {mode!r} must be bev or 3d")
        return mode, float(ev["iou_threshold_3d"])


BOX_TASKS = {
    TASK: BoxTask(TASK, "od", METHOD, ("x1", "y1", "x2", "y2")),
    "detection3d": BoxTask("detection3d", "od3d", "detection3d_v1", BOX7),
}


def geometry(mode: str) -> Geometry:
    """The IoU of a result's matching: ``xyxy`` (pixels), ``bev`` or ``3d`` (rotated boxes)."""
    if mode == "xyxy":
        return AXIS_ALIGNED
    from ml_debugger.core.detection.rotated import ROTATED_3D, ROTATED_BEV

    return {"bev": ROTATED_BEV, "3d": ROTATED_3D}[mode]


def box_array(frame: pl.DataFrame, geom: Geometry) -> np.ndarray:
    """``[n, 4]`` xyxy or ``[n, 7]`` rotated boxes of a boxes / gt_boxes frame, as ``geom`` reads them."""
    cols = ("x1", "y1", "x2", "y2") if geom.dim == 4 else BOX7
    return frame.select(cols).to_numpy().astype(np.float64).reshape(-1, geom.dim)


@dataclass(frozen=True)
class DetectionEvaluation:
    result: ResultInfo
    notes: list[str] = field(default_factory=list)


def _ids(*frames: pl.DataFrame) -> dict[str, int]:
    names = sorted(set().union(*(set(f["sample_id"].to_list()) for f in frames)))
    return {s: i for i, s in enumerate(names)}


def ap_inputs(boxes: pl.DataFrame, gt: pl.DataFrame, mode: str) -> tuple[tuple[np.ndarray, ...], Geometry]:
    """The positional arguments of ``metrics.average_precision`` / ``mean_ap`` for a run's kept
    boxes and ground truth (images numbered in common), and the geometry of IoU ``mode``."""
    geom = geometry(mode)
    ids = _ids(boxes, gt)
    args = (
        np.array([ids[s] for s in boxes["sample_id"]]), box_array(boxes, geom), boxes["label"].to_numpy(),
        boxes["score"].to_numpy(), np.array([ids[s] for s in gt["sample_id"]]), box_array(gt, geom),
        gt["cls"].to_numpy(), gt["crowd"].to_numpy(),
    )  # fmt: skip
    return args, geom


@dataclass(frozen=True)
class _Labels:
    code: np.ndarray
    gt_cls: np.ndarray  # class of the ground truth each box is about (-1: none)
    tp: np.ndarray
    ignored: np.ndarray
    error_code: list[str]
    missed: int
    gt_missed: np.ndarray  # per ground truth: ordinary and taken by no true positive (NP)


def label_boxes(boxes: pl.DataFrame, gt: pl.DataFrame, classes: list[str], iou: float,
                mode: str = "xyxy") -> _Labels:  # fmt: skip
    """Match the boxes of a labelled run to its ground truth and code every box (IoU ``mode``:
    xyxy pixels, or bev / 3d for rotated boxes)."""
    geom = geometry(mode)
    ids = _ids(boxes, gt)
    pi = np.array([ids[s] for s in boxes["sample_id"]], dtype=np.int64)
    gi = np.array([ids[s] for s in gt["sample_id"]], dtype=np.int64)
    pb, gb = box_array(boxes, geom), box_array(gt, geom)
    pc, gc = boxes["label"].to_numpy(), gt["cls"].to_numpy()
    crowd = gt["crowd"].to_numpy()
    m = match(pi, pb, pc, boxes["score"].to_numpy(), gi, gb, gc, crowd, iou_threshold=iou, geometry=geom)
    c = codes(pi, pb, pc, gi, gb, gc, m, crowd, iou_threshold=iou, geometry=geom)
    gt_cls = np.where(c.gt >= 0, gc[np.clip(c.gt, 0, None)] if len(gc) else -1, -1)
    pred_codes, _ = error_codes(c, pc, gc, classes)
    return _Labels(c.code, gt_cls, m.tp, m.ignored, pred_codes, int(c.missed.sum()), c.missed)


def _image_folds(sample_ids: pl.Series, k: int, seed: int) -> np.ndarray:
    """A fold per box such that all boxes of one image share it."""
    names = sample_ids.unique().sort().to_list()
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[s] for s in sample_ids], dtype=np.int64)


def _fit(x: np.ndarray, y: np.ndarray, fold: np.ndarray, l2: float, min_errors: int, what: str,
         notes: list[str], score: np.ndarray, signals: tuple[str, ...]) -> tuple[ErrorModel, np.ndarray]:  # fmt: skip
    n_err, n_ok = int(y.sum()), int(len(y) - y.sum())
    if min(n_err, n_ok) < max(2, min_errors):
        notes.append(f"{what}: {n_err} positive and {n_ok} negative box(es), too few to fit; 1 − score instead")
        return ErrorModel("one_minus_confidence", ["confidence"]), np.clip(1.0 - score, 0.0, 1.0)
    return cross_fit(x, y, list(signals), fold, l2=l2)


def evaluate_detection(
    run_name: str,
    *,
    db: str | Path | None = None,
    name: str | None = None,
    config: str | Path | None = None,
    now: datetime | None = None,
) -> DetectionEvaluation:
    """Fit a detection result on the labelled run ``run_name`` and store it with its box scores."""
    cfg = load_config(config)
    ev, zcfg = cfg["evaluate"], cfg["zones"]
    with Store(db) as store:
        if name is not None and (not name.strip() or store.get_result(name) is not None):
            raise UsageError(f"a result named {name!r} exists (or the name is empty); choose another --result-name")
        run = store.require_run(run_name)
        if not run.labelled:
            raise UsageError(
                f"run {run.name!r} has no ground truth; evaluate a labelled detection run (COCO or YOLO), "
                f"then `mldbg score {run.name}`"
            )
        if run.status != "complete":
            raise UsageError(f"run {run.name!r} is {run.status}; finish it by re-running its extract command")
        kind = BOX_TASKS[run.task]
        mode, iou = kind.matching(ev)
        boxes, gt = store.read_boxes(run.name), store.read_gt_boxes(run.name)
        feats = store.box_features(run.name, int(run.feature_dim or 0))
        lab = label_boxes(boxes, gt, run.classes, iou, mode)
        keep = ~lab.ignored
        if int(keep.sum()) < 3:
            raise UsageError(f"run {run.name!r} has {int(keep.sum())} scorable box(es); evaluate needs at least 3")
        frame = kind.box_signals(boxes.filter(pl.Series(keep)))
        y_err = ~lab.tp[keep]
        y_det = lab.code[keep] != "A"
        gt_cls = lab.gt_cls[keep]
        pred = frame["label"].to_numpy()
        images = frame["sample_id"]
        img_ids = _ids(frame)
        bank, knn = em.build_box_bank(
            feats[keep], np.array([img_ids[s] for s in images]), y_err, gt_cls, pred, k=int(ev["k"])
        )
        frame = frame.with_columns(pl.Series(k, v) for k, v in knn.items())
        x = _design(frame, kind.signals)
        fold = _image_folds(images, max(2, min(int(ev["folds"]), len(img_ids))), int(ev["seed"]))
        notes: list[str] = []
        score = frame["score"].to_numpy().astype(np.float64)
        l2, min_err = float(ev["l2"]), int(ev["min_errors"])
        models, oof = {}, {}
        models["error_proba"], oof["error_proba"] = _fit(x, y_err, fold, l2, min_err, "error_proba", notes, score,
                                                          kind.signals)  # fmt: skip
        models["det_error_proba"], oof["det_error_proba"] = _fit(
            x, y_det, fold, l2, min_err, "det_error_proba", notes, score, kind.signals
        )
        has_gt = gt_cls >= 0
        y_cls = gt_cls != pred
        cls_model, cls_oof = _fit(x[has_gt], y_cls[has_gt], fold[has_gt], l2, min_err, "cls_error_proba", notes,
                                  score[has_gt], kind.signals)  # fmt: skip
        models["cls_error_proba"] = cls_model
        oof["cls_error_proba"] = _predict(cls_model, x, score)
        oof["cls_error_proba"][has_gt] = cls_oof
        scored = frame.with_columns(pl.Series(k, v, dtype=pl.Float64) for k, v in oof.items())
        scored = scored.with_columns(
            pl.col("score").alias("confidence"),
            pl.col("label").alias("pred"),
            pl.lit(None, dtype=pl.Float32).alias("stability"),
            pl.lit(None, dtype=pl.Float32).alias("flip_rate"),
            pl.Series("is_error", y_err),
        )
        rules = parse_rules(zcfg, run.classes, where=f"--config {config}" if config else "zones")
        rules, calibration = calibrate_stable(
            scored, scored["is_error"], rules, target=float(zcfg["coverage_target"]),
            level=float(zcfg["coverage_level"]), candidates=int(zcfg["coverage_candidates"]),
        )  # fmt: skip
        if calibration.cutoff is None:
            notes.append(
                f"no error_proba cut-off keeps stable_coverage's box error rate under {calibration.target:.1%} "
                f"with {calibration.level:.0%} confidence: stable_coverage is empty"
            )
        scored = assign(scored, rules)
        codes_kept = [c for c, k in zip(lab.error_code, keep, strict=True) if k]
        scored = scored.with_columns(pl.Series("error_code", codes_kept))
        metrics = _metrics(scored, boxes, gt, lab, y_det, y_cls, has_gt, float(ev["confident"]), zcfg, mode)
        metrics["iou"] = {"mode": mode, "threshold": iou}
        metrics["coverage"] = calibration.to_dict()
        metrics["notes"] = notes
        when = now or datetime.now()
        name = name or store.unique_result_name(f"{run.model_name}_{run.model_version}_{kind.tag}_v1_{when:%Y%m%d}")
        info = ResultInfo(
            name=name, task=run.task, model_name=run.model_name, model_version=run.model_version, method=kind.method,
            eval_run=run.name, reference_run=run.name, classes=run.classes, feature_dim=run.feature_dim,
            stability=False, config={"evaluate": ev, "zones": zcfg},
            thresholds=rules.to_dict(run.classes),
            model={"format": 1, "targets": {k: m.to_dict() for k, m in models.items()}, "k": bank.k, "iou": iou,
                   "iou_mode": mode, "signals": list(kind.signals)},
            metrics=metrics, created=when, mldbg_version=__version__,
        )  # fmt: skip
        arrays = {
            "bank_self_distances": bank.self_distances.numpy(),
            "bank_keep": keep.astype(np.float64),
            "bank_is_error": y_err.astype(np.float64),
            "bank_true_cls": gt_cls.astype(np.float64),
        }
        store.create_result(info, arrays, _score_rows(scored), table="box_scores")
    return DetectionEvaluation(info, notes)


def _design(frame: pl.DataFrame, signals: tuple[str, ...]) -> np.ndarray:
    return (
        frame.select(pl.col(s).cast(pl.Float64).fill_null(0.0).fill_nan(0.0) for s in signals)
        .to_numpy()
        .astype(np.float64)
    )


def _predict(model: ErrorModel, x: np.ndarray, score: np.ndarray) -> np.ndarray:
    if model.kind == "one_minus_confidence":
        return np.clip(1.0 - score, 0.0, 1.0)
    from ml_debugger.core.errormodel import _sigmoid

    a, b = model.platt
    return np.asarray(_sigmoid(a * model.logit_of(x) + b))


def _score_rows(scored: pl.DataFrame) -> pl.DataFrame:
    return scored.select(
        "sample_id",
        "box",
        *(pl.col(t).cast(pl.Float32) for t in TARGETS),
        pl.col("ood_score").cast(pl.Float32),
        "zone",
        "error_code",
        pl.col("knn_error").cast(pl.Float32),
        pl.col("knn_distance").cast(pl.Float32),
    )


def _metrics(scored: pl.DataFrame, boxes: pl.DataFrame, gt: pl.DataFrame, lab: _Labels, y_det: np.ndarray,
             y_cls: np.ndarray, has_gt: np.ndarray, confident: float,
             zcfg: dict[str, Any], mode: str = "xyxy") -> dict[str, Any]:  # fmt: skip
    y = scored["is_error"].to_numpy().astype(bool)
    score = scored["score"].to_numpy().astype(np.float64)
    conf = score >= confident
    dets = {
        "error_proba": detector_metrics(y, scored["error_proba"].to_numpy(), conf),
        "one_minus_score": detector_metrics(y, 1.0 - score, conf),
        "entropy": detector_metrics(y, scored["entropy"].to_numpy().astype(np.float64), conf),
    }
    versus = auroc_difference(y, scored["error_proba"].to_numpy(), 1.0 - score)
    args, geom = ap_inputs(boxes, gt, mode)
    ap = mean_ap(*args, geometry=geom)
    counts = {c: int((lab.code == c).sum()) for c in CODES}
    return {
        "samples": len(y),
        "unit": "boxes",
        "errors": int(y.sum()),
        "images": int(boxes["sample_id"].n_unique()),
        "precision": float(1 - y.mean()) if len(y) else None,
        "confident_threshold": confident,
        "detectors": dets,
        "best_baseline": {"name": "one_minus_score", "auroc": dets["one_minus_score"]["auroc"], "versus": versus},
        "det_error": detector_metrics(y_det, scored["det_error_proba"].to_numpy()),
        "cls_error": detector_metrics(y_cls[has_gt], scored["cls_error_proba"].to_numpy()[has_gt]),
        "ece": ece(y, scored["error_proba"].to_numpy()),
        "calibration": "Platt scaling of the out-of-fold logits (folds of whole images)",
        "zones": zone_table(scored, level=float(zcfg["coverage_level"])),
        "codes": counts,
        "missed": lab.missed,
        "map50": ap["map50"],
        "map": ap["map"],
        "model_kind": "logistic",
    }


def load_box_bank(store: Store, info: ResultInfo) -> em.BoxBank:
    """The result's reference boxes as a kNN bank (what ``evaluate_detection`` fitted against)."""
    import torch

    from ml_debugger.core.neighbors import normalize

    ref = store.require_run(info.reference_run)
    arrays = store.result_arrays(info.name)
    keep = arrays["bank_keep"].astype(bool)
    boxes = store.read_boxes(ref.name).filter(pl.Series(keep))
    feats = store.box_features(ref.name, int(ref.feature_dim or 0))[keep]
    ids = _ids(boxes)
    return em.BoxBank(
        normalize(feats),
        torch.tensor([ids[s] for s in boxes["sample_id"]]),
        torch.from_numpy(arrays["bank_is_error"].astype(bool)),
        torch.from_numpy(arrays["bank_true_cls"].astype(np.int64)),
        int(info.model["k"]),
        torch.from_numpy(arrays["bank_self_distances"].astype(np.float32)),
    )


def score_box_frame(boxes: pl.DataFrame, feats: np.ndarray, info: ResultInfo, bank: em.BoxBank) -> pl.DataFrame:
    """Signals, the three probabilities and the zone of ``boxes`` (``Store.read_boxes`` columns)
    with their features ``[len(boxes), d]``: what scoring a run and the real-time filter share."""
    kind = BOX_TASKS[info.task]
    frame = kind.box_signals(boxes)
    if frame.height:
        knn = em.box_knn(feats, frame["label"].to_numpy(), bank)
        frame = frame.with_columns(pl.Series(k, v) for k, v in knn.items())
    else:
        frame = frame.with_columns(
            pl.lit(0.0).alias(c) for c in ("knn_error", "knn_cls_disagree", "knn_distance", "ood_score")
        )
    x = _design(frame, kind.signals)
    score = frame["score"].to_numpy().astype(np.float64)
    targets = info.model["targets"]
    frame = frame.with_columns(
        pl.Series(t, _predict(ErrorModel.from_dict(targets[t]), x, score), dtype=pl.Float64) for t in TARGETS
    )
    frame = frame.with_columns(
        pl.col("score").alias("confidence"),
        pl.col("label").alias("pred"),
        pl.lit(None, dtype=pl.Float32).alias("stability"),
        pl.lit(None, dtype=pl.Float32).alias("flip_rate"),
    )
    return assign(frame, ZoneRules.from_dict(info.thresholds, info.classes))


def score_boxes(store: Store, info: ResultInfo, run: RunInfo) -> pl.DataFrame:
    """Box score rows of every kept box of ``run`` under the detection result ``info``."""
    boxes = store.read_boxes(run.name)
    feats = store.box_features(run.name, int(run.feature_dim or 0))
    frame = score_box_frame(boxes, feats, info, load_box_bank(store, info) if boxes.height else None)  # type: ignore[arg-type]
    codes_col: list[str | None] = [None] * frame.height
    if run.labelled and frame.height:
        lab = label_boxes(boxes, store.read_gt_boxes(run.name), run.classes, float(info.model["iou"]),
                          info.model.get("iou_mode", "xyxy"))  # fmt: skip
        codes_col = list(lab.error_code)
    return _score_rows(frame.with_columns(pl.Series("error_code", codes_col, dtype=pl.String)))


def check_detection_compatible(info: ResultInfo, run: RunInfo) -> None:
    from ml_debugger.core.scoring import compatibility_problems

    problems = compatibility_problems(info, run)
    if problems:
        raise UsageError(f"result {info.name} cannot score run {run.name!r}: {'; '.join(problems)}")
