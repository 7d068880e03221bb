"""The sections of a report, one function each, and which task draws which (``SECTIONS``).

A section function takes the loaded :class:`ReportData` and returns a :class:`Section` (or None
when it has nothing to say, e.g. a confusion matrix of an unlabelled run). A new task (2D or 3D
detection) adds its own functions and lists them under its task name, next to the shared ones.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from ml_debugger.core.detection import DETECTION_TASKS
from ml_debugger.core.report import aggregates as agg
from ml_debugger.core.report import charts
from ml_debugger.core.report.data import ReportData
from ml_debugger.core.report.thumbs import bev_uri, data_uri
from ml_debugger.core.wording import (
    ZONE_INFO,
    class_rows,
    coverage_line,
    detection_lines,
    detector_rows,
    headline,
    threshold_rows,
    zone_rows,
)
from ml_debugger.core.zones import ZoneRules, threshold_expr

# Samples per gallery (the CLI's --gallery overrides it).
GALLERY = 24
GALLERY_ZONES = ("critical_hotspot", "aleatoric_hotspot")
# A confusion matrix of more classes keeps the classes with the most errors.
MAX_CONFUSION_CLASSES = 30


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: str


@dataclass(frozen=True)
class Options:
    gallery: int = GALLERY


SectionFn = Callable[[ReportData, Options], "Section | None"]


def esc(value: Any) -> str:
    return html.escape(str(value))


def table(cols: list[str], rows: Iterable[Iterable[Any]], *, numeric: Iterable[str] = (), cls: str = "") -> str:
    """An HTML table; ``numeric`` columns are right-aligned."""
    right = {i for i, c in enumerate(cols) if c in set(numeric)}
    head = "".join(f"<th{' class=num' if i in right else ''}>{esc(c)}</th>" for i, c in enumerate(cols))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in right else ''}>{esc(v)}</td>" for i, v in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def overview(data: ReportData, opts: Options) -> Section:
    r, run, m = data.result, data.run, data.metrics
    if data.is_eval_run:
        about = "the result's own labelled run: out-of-fold scores (each sample scored by a model that never saw it)"
    elif data.labelled:
        about = "a labelled run the result never saw: held-out scores"
    else:
        about = "an unlabelled run: what the result predicts about it (no observed error rates)"
    facts = [
        ("result", r.name),
        ("model", f"{r.model_name}/{r.model_version}"),
        ("method", f"{r.method} ({r.model.get('kind') or 'one logistic model per target'})"),
        ("run", f"{run.name}: {about}"),
        ("samples", f"{data.frame.height:,}"),
        ("labelled run of the result", r.eval_run),
        ("classes", f"{len(r.classes):,}"),
        ("stability", f"K={run.stability_k}" if run.stability_k else "not extracted (extract with --stability K)"),
        *([("unit", "one row per kept box")] if data.task in DETECTION_TASKS else []),
    ]
    if m is not None and m.get("precision") is not None:
        facts.insert(5, ("precision", f"{m['precision']:.2%} of kept boxes right ({m['errors']:,} not)"))
    elif m is not None and m.get("accuracy") is not None:
        facts.insert(5, ("accuracy", f"{m['accuracy']:.2%} ({m['errors']:,} errors)"))
    elif data.frame.height:
        expected = float(data.frame["error_proba"].sum())
        facts.insert(5, ("expected errors", f"{expected:,.1f} (Σ error_proba: {expected / data.frame.height:.1%})"))
    body = table(["", ""], facts, cls="kv")
    if m is not None:
        title, cols, rows = detector_rows(m)
        body += f'<p class="headline">{esc(headline(m))}</p>'
        if m.get("ece") is not None:
            body += note(f"calibration: {m.get('calibration') or 'Platt scaling'}; ECE {m['ece']:.4f}")
        body += f"<h3>{esc(title)}</h3>" + table(cols, rows, numeric=cols[1:], cls="detectors")
        body += "".join(note(line) for line in detection_lines(m))
    return Section("overview", "Overview", body)


def zones(data: ReportData, opts: Options) -> Section:
    from ml_debugger.core.summary import zone_table

    rows_src = data.metrics["zones"] if data.metrics is not None else zone_table(data.frame)
    cols, rows = zone_rows(rows_src)
    how = "out-of-fold" if data.is_eval_run else ("held out" if data.labelled else "unlabelled: no error rates")
    zone_html = f"<h3>zones of run {esc(data.run.name)} ({how})</h3>" + table(
        cols, rows, numeric=("samples", "share", "error rate", "95% interval"), cls="zones"
    )
    line = coverage_line(data.result.metrics)
    if line:
        zone_html += note(line + " — measured on the result's labelled run")
    tcols, trows = threshold_rows(data.result.thresholds)
    thresholds = "<h3>thresholds</h3>" + table(tcols, trows, numeric=("value",), cls="thresholds")
    return Section("zones", "Zones", f'<div class="row"><div>{zone_html}</div><div>{thresholds}</div></div>')


def heatmaps(data: ReportData, opts: Options) -> Section:
    parts = []
    for kind in agg.HEATMAPS.values():
        grids = agg.grids(data.frame, kind, data.reference, data.classes)
        if grids is None:
            why = (
                "detection runs have no stability"
                if data.task in DETECTION_TASKS
                else ("stability was not extracted for this run (extract with --stability K)")
            )
            parts.append(note(f"{kind.title}: {why}"))
            continue
        parts.append(charts.heatmap(grids, kind.title, f"heatmap-{kind.name}"))
    what = "observed error rate" if data.labelled else "mean error_proba (no labels: the predicted error rate)"
    intro = note(
        f"Colour: {what}; each cell also shows its sample count. The dropdown picks one predicted class. "
        "Stability rows are quantiles of the labelled run."
    )
    return Section("heatmaps", "Heatmaps", intro + "".join(f'<div class="heatmap">{p}</div>' for p in parts))


def calibration(data: ReportData, opts: Options) -> Section | None:
    if not data.labelled:
        return None
    bins = agg.reliability(data.frame)
    return Section("calibration", "Reliability of error_proba", charts.reliability(bins, "reliability"))


def distribution(data: ReportData, opts: Options) -> Section | None:
    stats = agg.zone_quantiles(data.frame)
    if not stats:
        return None
    return Section("distribution", "error_proba per zone", charts.zone_boxes(stats, "zone-boxes"))


def confusion(data: ReportData, opts: Options) -> Section | None:
    matrix = agg.confusion(data.frame, len(data.classes))
    if matrix is None:
        return None
    keep = agg.top_confused(matrix, MAX_CONFUSION_CLASSES)
    names = [data.classes[i] for i in keep]
    body = charts.confusion(matrix[keep][:, keep], names, "confusion")
    if len(keep) < len(data.classes):
        body = note(f"the {len(keep)} of {len(data.classes)} classes with the most errors") + body
    return Section("confusion", "Confusion matrix", body)


def classes(data: ReportData, opts: Options) -> Section | None:
    if data.metrics is None or not data.metrics.get("classes"):
        return None
    cols, rows = class_rows(data.metrics["classes"])
    return Section("classes", "Per class (true label)", table(cols, rows, numeric=cols[1:], cls="classes"))


def _card(row: dict[str, Any], data: ReportData) -> str:
    uri = data_uri(row["path"], data.db_path)
    img = f'<img src="{uri}" alt="{esc(row["sample_id"])}">' if uri else '<div class="missing">image not found</div>'
    names = data.classes
    pred = names[row["pred"]]
    truth = f"true {esc(names[row['label']])} → " if row["label"] is not None else ""
    stab = "" if row["stability"] is None else f" · stability {row['stability']:.3f}"
    return (
        f'<figure class="card">{img}<figcaption><b title="{esc(row["path"])}">{esc(row["sample_id"])}</b>'
        f"<span>{truth}predicted {esc(pred)}</span>"
        f"<code>{esc(row['error_code'] or '')}</code>"
        f"<span>error_proba {row['error_proba']:.3f} · confidence {row['confidence']:.3f}</span>"
        f"<span>ood_score {row['ood_score']:.3f}{stab}</span></figcaption></figure>"
    )


def gallery(data: ReportData, opts: Options) -> Section | None:
    if opts.gallery <= 0:
        return None
    parts = []
    for zone in GALLERY_ZONES:
        rows = agg.gallery(data.frame, zone, opts.gallery)
        label = ZONE_INFO[zone][0]
        total = int((data.frame["zone"] == zone).sum())
        head = f"<h3>{esc(zone)} ({esc(label)}): top {rows.height} of {total:,} by error_proba</h3>"
        cards = "".join(_card(r, data) for r in rows.to_dicts())
        parts.append(head + (f'<div class="gallery">{cards}</div>' if cards else note("no samples in this zone")))
    return Section("gallery", "Gallery", "".join(parts))


def shift(data: ReportData, opts: Options) -> Section | None:
    if data.is_eval_run:
        return None
    rules = ZoneRules.from_dict(data.result.thresholds, data.classes)
    ood = threshold_expr(rules, "ood")
    ref, cur = agg.zone_shares(data.reference), agg.zone_shares(data.frame)
    names = (data.result.eval_run, data.run.name)
    rows = [[z, f"{ref[z]:.1%}", f"{cur[z]:.1%}", "–" if ref[z] == 0 else f"{cur[z] / ref[z]:.2f}×"] for z in ref]
    ref_ood, cur_ood = agg.ood_share(data.reference, ood), agg.ood_share(data.frame, ood)
    rows.append(["flagged OOD (ood_score ≥ ood)", f"{ref_ood:.1%}", f"{cur_ood:.1%}", _ratio(cur_ood, ref_ood)])
    cols = ["zone", f"{names[0]} (labelled)", f"{names[1]} (this run)", "ratio"]
    body = note(
        "A zone that grows against the labelled run, or more samples far from every labelled one "
        "(OOD), signals a distribution shift: the labelled run no longer describes this data."
    )
    body += charts.zone_shift(ref, cur, names, "zone-shift") + table(cols, rows, numeric=cols[1:], cls="shift")
    return Section("shift", "Distribution shift against the labelled run", body)


def _ratio(a: float, b: float) -> str:
    return "–" if b == 0 else f"{a / b:.2f}×"


def predicted_classes(data: ReportData, opts: Options) -> Section | None:
    if data.is_eval_run:
        return None
    names = data.classes

    def shares(frame: pl.DataFrame) -> dict[int, float]:
        n = max(1, frame.height)
        return {int(k): v / n for k, v in frame.group_by("pred").len().iter_rows()}

    ref, cur = shares(data.reference), shares(data.frame)
    rows = [
        [names[i], f"{ref.get(i, 0.0):.1%}", f"{cur.get(i, 0.0):.1%}", _ratio(cur.get(i, 0.0), ref.get(i, 0.0))]
        for i in range(len(names))
    ]
    cols = ["predicted class", data.result.eval_run, data.run.name, "ratio"]
    return Section("predicted", "Predicted classes against the labelled run", table(cols, rows, numeric=cols[1:]))


# -- detection ---------------------------------------------------------------------------------


def box_codes(data: ReportData, opts: Options) -> Section | None:
    if data.frame["error_code"].null_count() == data.frame.height:
        return None
    codes = data.frame["error_code"].drop_nulls().str.extract(r"^DET:(\w+):", 1).value_counts(sort=True)
    names, counts = codes["error_code"].to_list(), codes["count"].to_list()
    body = charts.bars(names, counts, "kept boxes per code (A with t = y is right)", "codes")
    if data.gt is not None:
        from ml_debugger.core.detection.evaluate import label_boxes

        model = data.result.model
        missed = label_boxes(data.frame, data.gt, data.classes, float(model.get("iou", 0.5)),
                             model.get("iou_mode", "xyxy")).missed  # fmt: skip
        body += note(f"missed ground-truth boxes (NP): {missed:,} of {data.gt.height:,}")
    return Section("codes", "Box codes", body)


def class_ap(data: ReportData, opts: Options) -> Section | None:
    import numpy as np

    from ml_debugger.core.detection.evaluate import ap_inputs
    from ml_debugger.core.detection.metrics import IOUS, average_precision

    if data.gt is None:
        return None
    g = data.gt
    args, geom = ap_inputs(data.frame, g, data.result.model.get("iou_mode", "xyxy"))
    per_iou = [average_precision(*args, iou_threshold=t, geometry=geom) for t in IOUS]
    counts = dict(g.filter(~pl.col("crowd")).group_by("cls").len().iter_rows())
    rows = [
        [data.classes[c], counts.get(c, 0), f"{per_iou[0][c]:.3f}", f"{np.mean([ap[c] for ap in per_iou]):.3f}"]
        for c in sorted(per_iou[0])
    ]
    cols = ["class", "ground truth", "AP@0.5", "AP@[.5:.95]"]
    return Section("ap", "Average precision per class", table(cols, rows, numeric=cols[1:], cls="ap"))


def box_gallery(data: ReportData, opts: Options) -> Section | None:
    if opts.gallery <= 0:
        return None
    parts = []
    three_d = data.task == "detection3d"
    cols = ("x", "y", "z", "dx", "dy", "dz", "yaw") if three_d else ("x1", "y1", "x2", "y2")
    gt_by_image: dict[str, list[tuple[float, ...]]] = {}
    if data.gt is not None:
        for sid, *values in data.gt.select("sample_id", *cols).iter_rows():
            gt_by_image.setdefault(sid, []).append(tuple(values))
    for zone in GALLERY_ZONES:
        rows = agg.gallery(data.frame, zone, opts.gallery)
        total = int((data.frame["zone"] == zone).sum())
        head = f"<h3>{esc(zone)} ({esc(ZONE_INFO[zone][0])}): top {rows.height} of {total:,} boxes by error_proba</h3>"
        cards = []
        for r in rows.to_dicts():
            truth = gt_by_image.get(r["sample_id"], [])
            if three_d:
                uri = bev_uri(r["path"], data.db_path, tuple(r[c] for c in cols), truth)
            else:
                drawn = [(b, "#1a9850") for b in truth]
                drawn.append((tuple(r[c] for c in cols), "#d73027"))
                uri = data_uri(r["path"], data.db_path, boxes=drawn)
            img = (
                f'<img src="{uri}" alt="{esc(r["sample_id"])}">'
                if uri
                else f'<div class="missing">{"frame" if three_d else "image"} not found</div>'
            )
            cards.append(
                f'<figure class="card">{img}<figcaption><b>{esc(r["sample_id"])} · box {r["box"]}</b>'
                f"<span>predicted {esc(r['predicted'])} · score {r['score']:.3f}</span>"
                f"<code>{esc(r['error_code'] or '')}</code>"
                f"<span>error_proba {r['error_proba']:.3f} · det {r['det_error_proba']:.3f} · "
                f"cls {r['cls_error_proba']:.3f}</span><span>ood_score {r['ood_score']:.3f}</span>"
                "</figcaption></figure>"
            )
        parts.append(
            head + (f'<div class="gallery">{"".join(cards)}</div>' if cards else note("no boxes in this zone"))
        )
    legend = note(
        "bird's-eye view, 24 m around the box (x forward is up): red the box, green the frame's ground truth "
        "(labelled runs), grey the points"
        if three_d
        else "red: the box; green: the image's ground truth (labelled runs)"
    )
    return Section("gallery", "Box gallery", legend + "".join(parts))


SECTIONS: dict[str, list[SectionFn]] = {
    "classification": [
        overview,
        zones,
        heatmaps,
        calibration,
        distribution,
        confusion,
        classes,
        gallery,
        shift,
        predicted_classes,
    ],
    "detection": [overview, zones, box_codes, class_ap, heatmaps, calibration, distribution, box_gallery, shift],
    # 3D: the same per-box sections, the gallery drawn in bird's-eye view.
    "detection3d": [overview, zones, box_codes, class_ap, heatmaps, calibration, distribution, box_gallery, shift],
}


def build_sections(data: ReportData, opts: Options) -> list[Section]:
    fns = SECTIONS.get(data.task)
    if fns is None:
        from ml_debugger.errors import UsageError

        raise UsageError(f"no report sections for task {data.task!r} yet (known: {', '.join(SECTIONS)})")
    return [s for s in (fn(data, opts) for fn in fns) if s is not None]
