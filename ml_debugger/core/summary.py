"""What an evaluation reports: detector metrics beside the baselines, zone and class tables.

Pure functions over a scored frame (one row per sample with ``is_error``, ``error_proba``,
``zone``, the softmax signals and the kNN signals); the JSON-ready dicts they return are
stored with the result and printed by the CLI.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ml_debugger.core.metrics import auroc_difference, detector_metrics, ece, wilson
from ml_debugger.core.zones import ZONES

# Baselines users get for free, as (column, sign): the score is sign × column, higher = "error".
BASELINES: dict[str, tuple[str, float]] = {
    "msp": ("confidence", -1.0),
    "entropy": ("entropy", 1.0),
    "doctor": ("doctor", 1.0),
    "energy": ("energy", 1.0),
    "trust_score": ("trust_score", -1.0),
}


def detectors(frame: pl.DataFrame, *, confident: float) -> dict[str, dict]:
    """Metrics of error_proba and of every baseline on the labelled rows of ``frame``."""
    y = frame["is_error"].to_numpy().astype(bool)
    conf = frame["confidence"].to_numpy() >= confident
    out = {"error_proba": detector_metrics(y, frame["error_proba"].to_numpy().astype(np.float64), conf)}
    for name, (col, sign) in BASELINES.items():
        out[name] = detector_metrics(y, sign * frame[col].to_numpy().astype(np.float64), conf)
    return out


def best_baseline(dets: dict[str, dict], metric: str = "auroc") -> tuple[str, float] | None:
    scored = [(name, m[metric]) for name, m in dets.items() if name != "error_proba" and m.get(metric) is not None]
    return max(scored, key=lambda t: t[1]) if scored else None


def zone_table(frame: pl.DataFrame, *, level: float = 0.95) -> list[dict]:
    """Per zone (all six, in DESIGN order): count, share, and when labelled the observed error
    rate with its Wilson interval."""
    n = max(1, frame.height)
    labelled = "is_error" in frame.columns and frame["is_error"].null_count() < frame.height
    aggs = [pl.len().alias("count")]
    if labelled:
        aggs.append(pl.col("is_error").cast(pl.Int64).sum().alias("errors"))
    counts = {r["zone"]: r for r in frame.group_by("zone").agg(aggs).to_dicts()}
    rows = []
    for zone in ZONES:
        r = counts.get(zone, {"count": 0, "errors": 0})
        row: dict = {"zone": zone, "count": int(r["count"]), "share": r["count"] / n}
        if labelled:
            e = int(r.get("errors") or 0)
            lo, hi = wilson(e, row["count"], level)
            row.update(errors=e, error_rate=(e / row["count"]) if row["count"] else None, error_lo=lo, error_hi=hi)
        rows.append(row)
    return rows


def class_table(frame: pl.DataFrame, classes: list[str]) -> list[dict]:
    """Per true class in brief: samples, accuracy, AUROC of error_proba and of MSP, coverage share
    and its error rate, critical count."""
    from ml_debugger.core.metrics import auroc

    rows = []
    for cls, part in frame.group_by("label", maintain_order=False):
        label = int(cls[0]) if cls[0] is not None else None
        if label is None:
            continue
        y = part["is_error"].to_numpy().astype(bool)
        cover = part.filter(pl.col("zone") == "stable_coverage")
        rows.append(
            {
                "class": classes[label],
                "samples": part.height,
                "accuracy": 1.0 - float(y.mean()),
                "auroc": auroc(y, part["error_proba"].to_numpy()),
                "auroc_msp": auroc(y, -part["confidence"].to_numpy()),
                "coverage_share": cover.height / part.height,
                "coverage_error_rate": float(cover["is_error"].mean()) if cover.height else None,  # type: ignore[arg-type]
                "critical": int((part["zone"] == "critical_hotspot").sum()),
            }
        )
    order = {c: i for i, c in enumerate(classes)}
    return sorted(rows, key=lambda r: order[r["class"]])


def evaluation_metrics(frame: pl.DataFrame, classes: list[str], *, confident: float, level: float) -> dict:
    """Everything stored in a result's ``metrics``: computed on the out-of-fold scores."""
    y = frame["is_error"].to_numpy().astype(bool)
    dets = detectors(frame, confident=confident)
    best = best_baseline(dets)
    versus = None
    if best is not None:
        col, sign = BASELINES[best[0]]
        versus = auroc_difference(
            y, frame["error_proba"].to_numpy().astype(np.float64), sign * frame[col].to_numpy().astype(np.float64)
        )
    return {
        "samples": frame.height,
        "errors": int(y.sum()),
        "accuracy": 1.0 - float(y.mean()) if len(y) else None,
        "confident_threshold": confident,
        "confident_samples": int((frame["confidence"] >= confident).sum()),
        "detectors": dets,
        "best_baseline": {"name": best[0], "auroc": best[1], "versus": versus} if best else None,
        "ece": ece(y, frame["error_proba"].to_numpy()),
        "zones": zone_table(frame, level=level),
        "classes": class_table(frame, classes),
    }
