"""What the report draws, reduced to small arrays: heatmap grids, reliability bins, per-zone
quantiles, the confusion matrix, zone shares. Pure functions over a scored frame (columns of
``Store.scan_scores`` plus ``is_error``), vectorised, so a 1M-sample pool reduces in a second and
the HTML stays small whatever the run's size.

Both the HTML report and ``mldbg show RESULT --heatmap`` draw the same :class:`Grid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from ml_debugger.core.metrics import wilson
from ml_debugger.core.zones import ZONES

# Fixed bin edges where the column has a fixed meaning, so reports compare across runs and the
# zone thresholds (0.5, 0.8, 0.9 confidence; 0.99 ood) fall on bin edges.
CONFIDENCE_EDGES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
ERROR_PROBA_EDGES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
OOD_EDGES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0)
# Stability has no fixed scale (it depends on the model and the perturbations): its edges are
# quantiles of the labelled run, so the lowest row holds its least stable 5%.
STABILITY_QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# Cells with fewer samples are drawn but left out of the colour scale's maximum.
MIN_CELL = 5


@dataclass(frozen=True)
class Axis:
    column: str
    label: str
    edges: tuple[float, ...]

    @property
    def ticks(self) -> list[str]:
        e = self.edges
        return [f"{_fmt_edge(e[i])}–{_fmt_edge(e[i + 1])}" for i in range(len(e) - 1)]

    def index(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value (the last bin is closed on the right; values outside are clipped)."""
        inner = np.asarray(self.edges[1:-1], dtype=np.float64)
        return np.searchsorted(inner, values, side="right")


def _fmt_edge(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if v not in (0.0, 1.0) else f"{v:g}"


@dataclass(frozen=True)
class HeatmapKind:
    name: str
    title: str
    x: str
    y: str


HEATMAPS = {
    "confidence-stability": HeatmapKind(
        "confidence-stability", "confidence × feature stability", "confidence", "stability"
    ),
    "error_proba-ood": HeatmapKind("error_proba-ood", "error_proba × ood_score", "error_proba", "ood_score"),
}
_LABELS = {
    "confidence": "confidence (max softmax)",
    "stability": "feature stability",
    "error_proba": "error_proba",
    "ood_score": "ood_score (kNN distance percentile)",
}


def axis(column: str, reference: pl.DataFrame) -> Axis | None:
    """The binning of ``column``; stability's quantile edges come from ``reference`` (the labelled
    run). None when the column was not measured (stability without ``--stability``)."""
    fixed = {"confidence": CONFIDENCE_EDGES, "error_proba": ERROR_PROBA_EDGES, "ood_score": OOD_EDGES}
    if column in fixed:
        return Axis(column, _LABELS[column], fixed[column])
    values = reference[column].drop_nulls().to_numpy()
    if len(values) == 0:
        return None
    qs = np.quantile(values.astype(np.float64), STABILITY_QUANTILES)
    edges = tuple(float(v) for v in np.unique(np.round(qs, 3)))
    if len(edges) < 2:
        edges = (float(qs[0]), float(qs[0]) + 1e-3)
    return Axis(column, _LABELS[column], edges)


@dataclass(frozen=True)
class Grid:
    """Counts over (y bin, x bin) and, for labelled rows, observed errors; always the mean
    error_proba. ``rate`` is the observed error rate where labelled, else the mean error_proba."""

    kind: str
    x: Axis
    y: Axis
    count: np.ndarray
    errors: np.ndarray | None
    proba_sum: np.ndarray
    class_name: str | None = None

    @property
    def labelled(self) -> bool:
        return self.errors is not None

    @property
    def rate(self) -> np.ndarray:
        num = self.errors if self.errors is not None else self.proba_sum
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, num / np.maximum(self.count, 1), np.nan)

    @property
    def rate_label(self) -> str:
        return "observed error rate" if self.labelled else "mean error_proba (predicted error rate)"

    @property
    def zmax(self) -> float:
        """Top of the colour scale: the highest rate among cells of at least MIN_CELL samples."""
        r = np.where(self.count >= MIN_CELL, self.rate, np.nan)
        top = float(np.nanmax(r)) if np.isfinite(r).any() else 1.0
        return max(0.05, min(1.0, np.ceil(top * 20) / 20))

    def to_dict(self) -> dict[str, Any]:
        rate = self.rate
        return {
            "kind": self.kind,
            "class": self.class_name,
            "x": {"column": self.x.column, "edges": list(self.x.edges)},
            "y": {"column": self.y.column, "edges": list(self.y.edges)},
            "value": self.rate_label,
            "count": self.count.tolist(),
            "errors": None if self.errors is None else self.errors.tolist(),
            "rate": [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in rate],
        }


def grids(
    frame: pl.DataFrame, kind: HeatmapKind, reference: pl.DataFrame, classes: list[str]
) -> dict[str | None, Grid] | None:
    """The heatmap of ``kind`` over all rows (key None) and per predicted class (key: class name,
    classes without samples left out). None when an axis was not measured."""
    ax, ay = axis(kind.x, reference), axis(kind.y, reference)
    if ax is None or ay is None:
        return None
    part = frame.filter(pl.col(kind.x).is_not_null() & pl.col(kind.y).is_not_null())
    nx, ny = len(ax.edges) - 1, len(ay.edges) - 1
    cls = part["pred"].to_numpy().astype(np.int64)
    n_cls = len(classes)
    cell = ay.index(part[kind.y].to_numpy()) * nx + ax.index(part[kind.x].to_numpy())
    key = cls * (nx * ny) + cell
    size = n_cls * nx * ny

    def per_class(weights: np.ndarray | None) -> np.ndarray:
        return np.bincount(key, weights=weights, minlength=size).reshape(n_cls, ny, nx)

    count = per_class(None).astype(np.int64)
    proba = per_class(part["error_proba"].to_numpy().astype(np.float64))
    labelled = "is_error" in part.columns and part.height > 0 and part["is_error"].null_count() == 0
    errors = per_class(part["is_error"].to_numpy().astype(np.float64)).astype(np.int64) if labelled else None
    out: dict[str | None, Grid] = {
        None: Grid(kind.name, ax, ay, count.sum(0), None if errors is None else errors.sum(0), proba.sum(0))
    }
    for i, name in enumerate(classes):
        if count[i].sum():
            out[name] = Grid(
                kind.name, ax, ay, count[i], None if errors is None else errors[i], proba[i], class_name=name
            )
    return out


def reliability(frame: pl.DataFrame, bins: int = 10, level: float = 0.95) -> list[dict[str, Any]]:
    """Equal-count bins of error_proba: mean predicted vs observed error rate with a Wilson
    interval (equal counts, because most samples sit near 0 where equal widths say nothing)."""
    lab = frame.filter(pl.col("is_error").is_not_null()).select("error_proba", "is_error").sort("error_proba")
    if lab.height == 0:
        return []
    p = lab["error_proba"].to_numpy().astype(np.float64)
    y = lab["is_error"].to_numpy().astype(np.int64)
    rows = []
    for idx in np.array_split(np.arange(len(p)), min(bins, len(p))):
        e, n = int(y[idx].sum()), len(idx)
        lo, hi = wilson(e, n, level)
        rows.append({"n": n, "errors": e, "mean_proba": float(p[idx].mean()), "observed": e / n, "lo": lo, "hi": hi})
    return rows


def zone_quantiles(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Per zone with samples: n and the 1/25/50/75/99th percentiles and mean of error_proba."""
    qs = {"p01": 0.01, "q1": 0.25, "median": 0.5, "q3": 0.75, "p99": 0.99}
    ep = pl.col("error_proba")
    stats = frame.group_by("zone").agg(
        pl.len().alias("n"), ep.mean().alias("mean"), *(ep.quantile(q).alias(k) for k, q in qs.items())
    )
    by_zone = {r["zone"]: r for r in stats.to_dicts()}
    return [by_zone[z] for z in ZONES if z in by_zone]


def confusion(frame: pl.DataFrame, n_classes: int) -> np.ndarray | None:
    """Counts[true, predicted] over labelled rows; None when no row is labelled."""
    lab = frame.filter(pl.col("label").is_not_null())
    if lab.height == 0:
        return None
    t = lab["label"].to_numpy().astype(np.int64)
    p = lab["pred"].to_numpy().astype(np.int64)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def top_confused(matrix: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` classes with the most errors (as true or predicted class), in
    class order: what a confusion matrix of many classes keeps."""
    if len(matrix) <= limit:
        return np.arange(len(matrix))
    off = matrix - np.diag(np.diag(matrix))
    involvement = off.sum(0) + off.sum(1)
    return np.sort(np.argsort(-involvement, kind="stable")[:limit])


def gallery(frame: pl.DataFrame, zone: str, n: int) -> pl.DataFrame:
    """The ``n`` samples of ``zone`` with the highest error_proba."""
    return frame.filter(pl.col("zone") == zone).sort("error_proba", descending=True).head(n)


def zone_shares(frame: pl.DataFrame) -> dict[str, float]:
    n = max(1, frame.height)
    counts = dict(frame.group_by("zone").len().iter_rows())
    return {z: counts.get(z, 0) / n for z in ZONES}


def ood_share(frame: pl.DataFrame, ood: pl.Expr) -> float:
    """Share of rows with ood_score at or above the (per predicted class) ``ood`` threshold."""
    if frame.height == 0:
        return 0.0
    return float(frame.select((pl.col("ood_score") >= ood).mean()).item())
