"""``BBoxStrategy``: from per-box scores to one score (and a flag) per image.

In order, one Polars plan over all boxes at once:

1. ``bbox_filter``: keep boxes in any of its ``zones`` that meet all its ``conditions`` (the
   query language, over per-box columns: error_proba, det_error_proba, cls_error_proba,
   ood_score, score, pred_size, zone, predicted, ...);
2. ``top_n``: keep each image's N boxes with the highest (``sort="desc"``) ``target_column``;
3. ``aggregation``: ``mean``, ``median`` or ``max`` of ``target_column`` per image, weighted by
   ``weight_column`` when given (weighted mean / weighted median; ``max`` ignores weights);
4. ``img_error_threshold``: flag = aggregated score ≥ threshold (flags are None when unset).

``pred_size`` is a box's area as a share of its image (3D: its volume in m³). An image with no box left after the
filter gets ``img_score`` 0 and ``n_boxes`` 0, and is never flagged: mldbg scores the boxes a
detector kept, so an empty image carries no error signal of its own; query ``n_boxes`` (or the
labelled run's ``NP`` codes) to find images where objects may have been missed.

The same implementation serves ``mldbg query``, ``data_filter.query()`` and the real-time filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import polars as pl

from ml_debugger.core.conditions import (
    BOX_NUMERIC_COLUMNS,
    BOX_TEXT_COLUMNS,
    Condition,
    check_column,
    filter_expr,
    parse_conditions,
    parse_zones,
)
from ml_debugger.errors import UsageError

TARGETS = ("error_proba", "det_error_proba", "cls_error_proba")
AGGREGATIONS = ("mean", "median", "max")


@dataclass(frozen=True)
class BBoxStrategy:
    target_column: str = "error_proba"
    zones: list[str] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    top_n: int | None = None
    aggregation: str = "mean"
    weight_column: str | None = None
    sort: str = "desc"
    img_error_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.target_column not in TARGETS:
            check_column(self.target_column, "target_column", TARGETS)
        if self.aggregation not in AGGREGATIONS:
            raise UsageError(f"aggregation {self.aggregation!r} is not one of: {', '.join(AGGREGATIONS)}")
        if self.weight_column is not None:
            check_column(self.weight_column, "weight_column", BOX_NUMERIC_COLUMNS)
        if self.sort not in ("desc", "asc"):
            raise UsageError(f"sort {self.sort!r} must be 'desc' or 'asc'")
        if self.top_n is not None and self.top_n < 1:
            raise UsageError(f"top_n {self.top_n} must be at least 1 (or None for all boxes)")
        if self.img_error_threshold is not None and not 0.0 <= self.img_error_threshold <= 1.0:
            raise UsageError(f"img_error_threshold {self.img_error_threshold} must be in [0, 1]")

    @classmethod
    def from_value(cls, value: BBoxStrategy | dict[str, Any] | None) -> BBoxStrategy:
        """A strategy from itself, None (the defaults) or a dict (validated, unknown keys named).

        ``bbox_filter`` in a dict is ``{"target_zones": [...], "conditions": [...]}``, a
        condition string, or a list of condition strings."""
        if value is None:
            return cls()
        if isinstance(value, BBoxStrategy):
            return value
        if not isinstance(value, dict):
            raise UsageError(f"a bbox strategy is a dict or a BBoxStrategy, not {type(value).__name__}")
        known = {f.name for f in fields(cls)} - {"zones", "conditions"} | {"bbox_filter"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise UsageError(f"unknown bbox strategy key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kw = {k: v for k, v in value.items() if k != "bbox_filter"}
        zones, conditions = _parse_filter(value.get("bbox_filter"))
        return cls(zones=zones, conditions=conditions, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_column": self.target_column,
            "bbox_filter": {"target_zones": self.zones, "conditions": [str(c) for c in self.conditions]},
            "top_n": self.top_n,
            "aggregation": self.aggregation,
            "weight_column": self.weight_column,
            "sort": self.sort,
            "img_error_threshold": self.img_error_threshold,
        }

    def image_scores(self, boxes: pl.DataFrame, images: pl.Series | None = None) -> pl.DataFrame:
        """One row per image: ``sample_id``, ``img_score``, ``n_boxes`` (after the filter), ``flag``.

        ``boxes`` has sample_id, the target and weight columns and whatever the filter names;
        ``images`` lists every image (so images without boxes get a row too)."""
        t = pl.col(self.target_column)
        kept = boxes.filter(filter_expr(self.zones, self.conditions))
        if self.top_n is not None:
            kept = (
                kept.sort(self.target_column, descending=self.sort == "desc")
                .group_by("sample_id", maintain_order=True)
                .head(self.top_n)
            )
        weight = pl.col(self.weight_column).cast(pl.Float64).clip(0, None) if self.weight_column else pl.lit(1.0)
        kept = kept.with_columns(weight.alias("_weight"))  # a real column, so sums count rows
        w = pl.col("_weight")
        if self.aggregation == "max":
            agg = t.max()
        elif self.aggregation == "mean":
            agg = (t * w).sum() / w.sum()
        else:  # weighted median: in target order, the first value where the cumulative weight reaches half
            agg = t.gather((w.cum_sum() >= w.sum() / 2).arg_max())
        scores = (
            kept.sort(self.target_column)
            .group_by("sample_id")
            .agg(agg.first().alias("img_score"), pl.len().alias("n_boxes"))
        )
        if images is not None:
            every = pl.DataFrame({"sample_id": images.unique()})
            scores = every.join(scores, on="sample_id", how="left")
        scores = scores.with_columns(
            pl.col("img_score").cast(pl.Float64).fill_null(0.0).fill_nan(0.0),
            pl.col("n_boxes").fill_null(0).cast(pl.Int64),
        )
        thr = self.img_error_threshold
        flag = (pl.col("img_score") >= thr) & (pl.col("n_boxes") > 0) if thr is not None else pl.lit(None)
        return scores.with_columns(flag.cast(pl.Boolean).alias("flag")).sort("sample_id")


def _parse_filter(value: Any) -> tuple[list[str], list[Condition]]:
    if value is None:
        return [], []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [], parse_conditions(value, BOX_NUMERIC_COLUMNS, BOX_TEXT_COLUMNS)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"target_zones", "conditions"})
        if unknown:
            raise UsageError(f"bbox_filter has unknown key(s) {', '.join(unknown)}; use target_zones and conditions")
        conds = parse_conditions(list(value.get("conditions") or []), BOX_NUMERIC_COLUMNS, BOX_TEXT_COLUMNS)
        return parse_zones(value.get("target_zones")), conds
    raise UsageError(f"bbox_filter {value!r} must be a condition, a list of conditions or a dict")


def box_frame(scores: pl.DataFrame, classes: list[str]) -> pl.DataFrame:
    """``Store.read_box_scores`` rows with the strategy's derived columns: pred_size, predicted."""
    w = (pl.col("x2") - pl.col("x1")).clip(0, None)
    h = (pl.col("y2") - pl.col("y1")).clip(0, None)
    area = (pl.col("width") * pl.col("height")).cast(pl.Float64)
    size = w * h / area
    if "dz" in scores.columns:  # 3D frames have no pixels: the box's volume (m³) instead
        size = pl.when(pl.col("width").is_null()).then(pl.col("dx") * pl.col("dy") * pl.col("dz")).otherwise(size)
    return scores.with_columns(
        size.cast(pl.Float64).alias("pred_size"),
        pl.col("label").replace_strict(dict(enumerate(classes)), return_dtype=pl.String).alias("predicted"),
    )


def box_is_error() -> pl.Expr:
    """From a box's ``error_code``: not a right box (not ``A`` with truth = prediction); null
    where the run is unlabelled (no code)."""
    parts = pl.col("error_code").str.extract_groups(r"^DET:(\w+):CLS(.*)->(.*)$")
    right = (parts.struct.field("1") == "A") & (parts.struct.field("2") == parts.struct.field("3"))
    return pl.when(pl.col("error_code").is_null()).then(None).otherwise(~right).alias("is_error")
