"""Plotly figures of the report, each from the small arrays of ``aggregates``.

Plotly draws interactive charts (hover, zoom, a class picker as a dropdown) from JSON specs, and
its JavaScript is inlined once per page, so the report opens offline. Each function returns an
HTML fragment (a ``div`` and the script that fills it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from ml_debugger.core.report.aggregates import Grid

ZONE_COLORS = {
    "stable_coverage": "#1a9850",
    "operational_coverage": "#91cf60",
    "hotspot": "#fdae61",
    "recessive_hotspot": "#fee08b",
    "critical_hotspot": "#d73027",
    "aleatoric_hotspot": "#8073ac",
}
_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}
_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "margin": {"l": 70, "r": 20, "t": 50, "b": 60},
    "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
}


def to_div(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(**_LAYOUT)
    height = f"{fig.layout.height or 450}px"
    return str(
        pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            config=_CONFIG,
            div_id=f"chart-{div_id}",
            default_height=height,
        )
    )


def _cells(grid: Grid) -> dict[str, Any]:
    """z, text and hover data of one grid, as plotly wants them (rows bottom to top)."""
    rate = grid.rate
    z = [[None if np.isnan(v) else float(v) for v in row] for row in rate]
    text = [
        [f"{v:.0%}<br>n={int(c):,}" if c else "" for v, c in zip(row, crow, strict=True)]
        for row, crow in zip(rate, grid.count, strict=True)
    ]
    errors = grid.errors if grid.errors is not None else np.full_like(grid.count, -1)
    mean = np.where(grid.count > 0, grid.proba_sum / np.maximum(grid.count, 1), np.nan)
    custom = np.stack([grid.count, errors, np.round(mean, 4)], axis=-1).tolist()
    return {"z": [z], "text": [text], "customdata": [custom], "zmax": [grid.zmax]}


def heatmap(grids: dict[str | None, Grid], title: str, div_id: str) -> str:
    """The heatmap of all samples, with a dropdown that switches to one predicted class."""
    overall = grids[None]
    first = _cells(overall)
    hover = "%{x} × %{y}<br>samples %{customdata[0]:,}<br>"
    if overall.labelled:
        hover += "errors %{customdata[1]:,}<br>observed error rate %{z:.1%}<br>"
    hover += "mean error_proba %{customdata[2]:.3f}<extra></extra>"
    fig = go.Figure(
        go.Heatmap(
            x=overall.x.ticks,
            y=overall.y.ticks,
            z=first["z"][0],
            text=first["text"][0],
            customdata=first["customdata"][0],
            texttemplate="%{text}",
            hovertemplate=hover,
            colorscale="YlOrRd",
            zmin=0.0,
            zmax=first["zmax"][0],
            colorbar={"title": {"text": overall.rate_label.split(" (")[0]}, "tickformat": ".0%"},
            xgap=1,
            ygap=1,
        )
    )
    buttons = []
    for name, grid in grids.items():
        label = "all classes" if name is None else f"predicted {name}"
        count = int(grid.count.sum())
        buttons.append(
            {
                "label": f"{label} ({count:,})",
                "method": "update",
                "args": [_cells(grid), {"title.text": f"{title}: {label}"}],
            }
        )
    fig.update_layout(
        title={"text": f"{title}: all classes"},
        xaxis={"title": {"text": overall.x.label}, "type": "category"},
        yaxis={"title": {"text": overall.y.label}, "type": "category"},
        height=460,
        updatemenus=[
            {"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right", "y": 1.16, "yanchor": "top"}
        ],
    )
    return to_div(fig, div_id)


def reliability(bins: list[dict[str, Any]], div_id: str) -> str:
    x = [b["mean_proba"] for b in bins]
    y = [b["observed"] for b in bins]
    top = max([*x, *(b["hi"] for b in bins), 0.05])
    fig = go.Figure(
        [
            go.Scatter(
                x=[0, top], y=[0, top], mode="lines", name="perfect calibration", line={"dash": "dot", "color": "#888"}
            ),
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name="observed",
                error_y={
                    "type": "data",
                    "array": [b["hi"] - b["observed"] for b in bins],
                    "arrayminus": [b["observed"] - b["lo"] for b in bins],
                },
                customdata=[[b["n"], b["errors"]] for b in bins],
                hovertemplate="mean error_proba %{x:.3f}<br>observed %{y:.1%} (%{customdata[1]} of "
                "%{customdata[0]})<extra></extra>",
            ),
        ]
    )
    fig.update_layout(
        title={"text": "reliability of error_proba (equal-count bins, 95% Wilson intervals)"},
        xaxis={"title": {"text": "mean error_proba in the bin"}, "range": [0, top * 1.02]},
        yaxis={"title": {"text": "observed error rate"}, "tickformat": ".0%", "range": [0, top * 1.02]},
        height=420,
    )
    return to_div(fig, div_id)


def zone_boxes(stats: list[dict[str, Any]], div_id: str) -> str:
    fig = go.Figure(
        [
            go.Box(
                name=s["zone"],
                x=[s["zone"]],
                q1=[s["q1"]],
                median=[s["median"]],
                q3=[s["q3"]],
                lowerfence=[s["p01"]],
                upperfence=[s["p99"]],
                mean=[s["mean"]],
                marker_color=ZONE_COLORS[s["zone"]],
                hovertemplate=f"{s['zone']}: {s['n']:,} samples<extra></extra>",
            )
            for s in stats
        ]
    )
    fig.update_layout(
        title={"text": "error_proba per zone (box: quartiles; whiskers: 1st and 99th percentiles)"},
        yaxis={"title": {"text": "error_proba"}, "range": [0, 1]},
        showlegend=False,
        height=400,
    )
    return to_div(fig, div_id)


def confusion(matrix: np.ndarray, names: list[str], div_id: str) -> str:
    rows = matrix.sum(1, keepdims=True)
    share = np.where(rows > 0, matrix / np.maximum(rows, 1), 0.0)
    fig = go.Figure(
        go.Heatmap(
            x=names,
            y=names,
            z=share.tolist(),
            text=matrix.tolist(),
            texttemplate="%{text}" if len(names) <= 20 else None,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "share of true class"}, "tickformat": ".0%"},
            hovertemplate="true %{y} → predicted %{x}<br>%{text} samples (%{z:.1%})<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    size = min(900, 260 + 28 * len(names))
    fig.update_layout(
        title={"text": "confusion matrix (rows: true class, share of the row)"},
        xaxis={"title": {"text": "predicted"}, "type": "category"},
        yaxis={"title": {"text": "true"}, "type": "category", "autorange": "reversed"},
        height=size,
    )
    return to_div(fig, div_id)


def zone_shift(reference: dict[str, float], current: dict[str, float], names: tuple[str, str], div_id: str) -> str:
    zones = list(reference)
    fig = go.Figure(
        [
            go.Bar(name=names[0], x=zones, y=[reference[z] for z in zones], marker_color="#9ecae1"),
            go.Bar(name=names[1], x=zones, y=[current[z] for z in zones], marker_color="#08519c"),
        ]
    )
    fig.update_layout(
        title={"text": "zone shares: labelled run vs this run"},
        barmode="group",
        yaxis={"title": {"text": "share of samples"}, "tickformat": ".0%"},
        height=380,
    )
    return to_div(fig, div_id)


def bars(names: list[str], values: list[float], title: str, div_id: str, *, y_title: str = "boxes") -> str:
    fig = go.Figure(go.Bar(x=names, y=values, marker_color="#4c78a8", text=[f"{v:,}" for v in values]))
    fig.update_layout(title={"text": title}, yaxis={"title": {"text": y_title}}, height=360)
    return to_div(fig, div_id)
