"""The words both reports use (terminal tables and the HTML report): detector and zone labels,
the headline sentence, the coverage promise and zone-table rows. Plain Python, no heavy imports.
"""

from __future__ import annotations

from typing import Any

# Display names of core.summary.BASELINES (plus ours) and of the zones of core.zones.ZONES.
DETECTOR_LABELS = {
    "error_proba": "error_proba (mldbg)",
    "msp": "max softmax (MSP)",
    "entropy": "entropy",
    "doctor": "DOCTOR 1−Σp²",
    "energy": "energy",
    "trust_score": "kNN Trust Score",
    "one_minus_score": "1 − box score",
}
ZONE_INFO = {
    "stable_coverage": ("Highly Stable", "not needed"),
    "operational_coverage": ("Stable", "low priority"),
    "hotspot": ("Unstable", "recommended"),
    "recessive_hotspot": ("Under-Confidence", "recommended"),
    "critical_hotspot": ("Over-Confidence", "highest priority"),
    "aleatoric_hotspot": ("Outlier", "review needed"),
}


def num(v: float | None, pattern: str = "{:.4f}") -> str:
    return "–" if v is None else pattern.format(v)


def headline(metrics: dict[str, Any]) -> str:
    """One sentence: does error_proba beat the best baseline?

    With a bootstrap interval, the verdict follows it: "beats" when the whole interval is above
    zero, "falls short of" when it is below, "is level with" when it holds zero (the point
    difference alone would call a noise-sized gap a win or a loss).
    """
    ours = metrics["detectors"]["error_proba"]["auroc"]
    best = metrics.get("best_baseline")
    if ours is None or not best:
        return "AUROC undefined (the labelled run needs both errors and correct predictions)"
    diff = ours - best["auroc"]
    ci = best.get("versus")
    lo, hi = (ci.get("lo"), ci.get("hi")) if ci else (None, None)
    if lo is None or hi is None:
        verdict = "beats" if diff > 0 else "does not beat"
    else:
        verdict = "beats" if lo > 0 else ("falls short of" if hi < 0 else "is level with")
    line = (
        f"error_proba AUROC {ours:.4f} {verdict} the best baseline, "
        f"{DETECTOR_LABELS.get(best['name'], best['name'])} ({best['auroc']:.4f}): difference {diff:+.4f}"
    )
    if lo is not None and hi is not None:
        line += f" (95% bootstrap interval {lo:+.4f} to {hi:+.4f})"
    return line


def zone_rows(zones: list[dict], *, labels: bool = True) -> tuple[list[str], list[list[Any]]]:
    labelled = any("error_rate" in z for z in zones)
    cols = ["zone", *(["label"] if labels else []), "samples", "share"]
    cols += (["error rate", "95% interval"] if labelled else []) + ["collection"]
    rows = []
    for z in zones:
        label, collection = ZONE_INFO[z["zone"]]
        row: list[Any] = [z["zone"], *([label] if labels else []), z["count"], f"{z['share']:.1%}"]
        if labelled:
            rate = z.get("error_rate")
            row += [
                "–" if rate is None else f"{rate:.1%}",
                "–" if not z["count"] else f"{z['error_lo']:.1%}–{z['error_hi']:.1%}",
            ]
        rows.append([*row, collection])
    return cols, rows


def coverage_line(metrics: dict[str, Any]) -> str | None:
    cov = metrics.get("coverage")
    if not cov:
        return None
    if cov["cutoff"] is None:
        return (
            f"stable_coverage: empty — no cut-off keeps its error rate under {cov['target']:.1%} "
            f"with {cov['level']:.0%} confidence"
        )
    return (
        f"stable_coverage promise: error rate ≤ {cov['target']:.1%} ({cov['level']:.0%} upper bound "
        f"{cov['upper_bound']:.2%} from {cov['errors']} error(s) in {cov['n']:,} samples; "
        f"error_proba ≤ {cov['cutoff']:.4f})"
    )


def detector_rows(metrics: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """Title, columns and rows of the table of error_proba beside the baselines."""
    thr = metrics.get("confident_threshold", 0.9)
    cols = ["detector", "AUROC", "AUPR-error", "FPR@95%TPR", f"AUROC conf≥{thr:g}"]
    rows = [
        [
            DETECTOR_LABELS.get(name, name),
            num(d["auroc"]),
            num(d["aupr_error"]),
            num(d["fpr95"]),
            num(d.get("auroc_confident")),
        ]
        for name, d in metrics["detectors"].items()
    ]
    how = "out-of-fold" if metrics.get("out_of_fold", True) else "held out"
    unit = metrics.get("unit", "samples")
    title = f"error detection on {metrics['samples']:,} labelled {unit} ({metrics['errors']:,} errors), {how}"
    return title, cols, rows


def class_rows(classes: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """The per-class table (true label): accuracy, AUROC beside MSP, coverage and critical count."""
    cols = ["class", "samples", "accuracy", "AUROC", "AUROC MSP", "coverage", "coverage err", "critical"]
    rows = [
        [
            c["class"],
            c["samples"],
            f"{c['accuracy']:.1%}",
            num(c["auroc"], "{:.3f}"),
            num(c["auroc_msp"], "{:.3f}"),
            f"{c['coverage_share']:.0%}",
            "–" if c["coverage_error_rate"] is None else f"{c['coverage_error_rate']:.1%}",
            c["critical"],
        ]
        for c in classes
    ]
    return cols, rows


def threshold_rows(thresholds: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Zone thresholds: one row per threshold, one column per class with overrides."""
    glob = thresholds["global"]
    per_class = thresholds.get("per_class", {})
    cols = ["threshold", "value", *per_class]
    rows = [
        [key, "–" if v is None else f"{v:.4g}", *("" if key not in o else f"{o[key]:.4g}" for o in per_class.values())]
        for key, v in glob.items()
    ]
    return cols, rows


def detection_lines(metrics: dict[str, Any]) -> list[str]:
    """A detection result's mAP, box codes and missed ground truth, one line each."""
    if metrics.get("map50") is None and "codes" not in metrics:
        return []
    lines = []
    if metrics.get("map50") is not None:
        mode = (metrics.get("iou") or {}).get("mode", "xyxy")
        iou = {"bev": " (BEV IoU)", "3d": " (3D IoU)"}.get(mode, "")
        unit = "images" if mode == "xyxy" else "frames"
        lines.append(
            f"mAP@0.5 {metrics['map50']:.4f}, mAP@[.5:.95] {metrics['map']:.4f}{iou} on "
            f"{metrics.get('images', 0):,} {unit}"
        )
    codes = metrics.get("codes") or {}
    if codes:
        lines.append("box codes: " + ", ".join(f"{k} {v:,}" for k, v in codes.items() if v))
    if metrics.get("missed") is not None:
        lines.append(f"missed ground-truth boxes (NP): {metrics['missed']:,}")
    for key, label in (("det_error", "det_error_proba (localisation/existence)"), ("cls_error", "cls_error_proba")):
        m = metrics.get(key)
        if m and m.get("auroc") is not None:
            lines.append(f"{label}: AUROC {m['auroc']:.4f}")
    return lines
