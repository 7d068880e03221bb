"""Tables shared by `evaluate`, `score` and `show RESULT`: detectors vs baselines, zones, classes."""

from __future__ import annotations

import itertools
from typing import Any

from rich.table import Table
from rich.text import Text

from ml_debugger.cli._console import out, table
from ml_debugger.core.wording import (
    class_rows,
    coverage_line,
    detection_lines,
    detector_rows,
    headline,
    threshold_rows,
    zone_rows,
)


def detector_table(metrics: dict[str, Any]) -> Table:
    title, cols, rows = detector_rows(metrics)
    return table(title, cols, rows, numeric=cols[1:], no_wrap=("detector",))


# Below this terminal width the zone table leaves out the zone labels ("Highly Stable", ...).
_WIDE = 110


def zone_table(zones: list[dict], title: str) -> Table:
    cols, rows = zone_rows(zones, labels=out.width >= _WIDE)
    return table(title, cols, rows, numeric=("samples", "share", "error rate", "95% interval"), no_wrap=("zone",))


def class_table(metrics: dict[str, Any]) -> Table:
    cols, rows = class_rows(metrics["classes"])
    return table("per class (true label)", cols, rows, numeric=cols[1:])


def threshold_table(thresholds: dict[str, Any]) -> Table:
    cols, rows = threshold_rows(thresholds)
    return table("zone thresholds", cols, rows, numeric=("value",))


def print_evaluation(metrics: dict[str, Any]) -> None:
    out.print(detector_table(metrics))
    out.print(headline(metrics))
    if metrics.get("ece") is not None:
        out.print(f"calibration: {metrics.get('calibration', '')}; expected calibration error {metrics['ece']:.4f}")
    out.print(zone_table(metrics["zones"], "zones (labelled run, out-of-fold)"))
    line = coverage_line(metrics)
    if line:
        out.print(line)
    for line in detection_lines(metrics):
        out.print(line)


# The report's YlOrRd colour scale, sampled for the terminal: (position, (r, g, b)).
_SCALE = (
    (0.0, (255, 255, 204)),
    (0.25, (254, 217, 118)),
    (0.5, (253, 141, 60)),
    (0.75, (227, 26, 28)),
    (1.0, (128, 0, 38)),
)


def _colour(t: float) -> tuple[int, int, int]:
    t = min(1.0, max(0.0, t))
    for (a, ca), (b, cb) in itertools.pairwise(_SCALE):
        if t <= b:
            f = (t - a) / (b - a)
            return tuple(round(x + (y - x) * f) for x, y in zip(ca, cb, strict=True))  # type: ignore[return-value]
    return _SCALE[-1][1]


def _style(t: float) -> str:
    r, g, b = _colour(t)
    fg = "black" if t < 0.6 else "white"
    return f"{fg} on rgb({r},{g},{b})"


def _edge(v: float) -> str:
    """0.95 → .95; 0 and 1 stay whole: short column headers."""
    s = f"{v:.3f}".rstrip("0").rstrip(".")
    return s[1:] if s.startswith("0.") else s


def heatmap_table(view: Any) -> Table:
    """A heatmap as a rich table: rows are the y bins (highest on top), columns the x bins; each
    cell shows its rate and sample count on a colour scale from 0 to the grid's ``zmax``."""
    from rich import box

    g = view.grid
    who = "all classes" if g.class_name is None else f"predicted {g.class_name}"
    title = (
        f"{g.rate_label} over {g.x.label} (columns) × {g.y.label} (rows): run {view.run}, {who}; "
        "each bin runs from the value shown to the next"
    )
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    t.add_column(g.y.column, justify="right", no_wrap=True, min_width=len(g.y.column))
    e = g.x.edges
    for i in range(len(e) - 1):
        t.add_column(f"≥{_edge(e[i])}", justify="center", no_wrap=True)
    rate, count, top = g.rate.tolist(), g.count.tolist(), g.zmax
    ye = g.y.edges
    for yi in reversed(range(len(ye) - 1)):
        cells: list[Any] = [f"≥{_edge(ye[yi])}"]
        for xi in range(len(e) - 1):
            n = count[yi][xi]
            if n == 0:
                cells.append(Text("·", style="dim"))
            else:
                v = rate[yi][xi]
                cells.append(Text(f"{v:.0%}\n{n:,}", style=_style(v / top)))
        t.add_row(*cells)
    return t


def heatmap_legend(view: Any) -> Text:
    top = view.grid.zmax
    line = Text(f"colour: {view.grid.rate_label}, 0% ")
    for i in range(9):
        line.append("  ", style=_style(i / 8))
    line.append(f" {top:.0%} and above; each cell: rate, then samples; · no samples")
    return line
