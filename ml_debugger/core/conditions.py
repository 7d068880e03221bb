"""Filters for queries: zones (OR) and conditions (AND), parsed into Polars expressions.

A condition is ``COLUMN OP VALUE`` (``error_proba>=0.8``, ``predicted==cat``, ``zone!=hotspot``)
or, from Python, ``{"error_proba": ">=0.8"}``. Columns come from a whitelist, operators from a
fixed set, and values are parsed as numbers for numeric columns: nothing is ever turned into
SQL text or evaluated, so ``error_proba>=0;drop table`` is simply a malformed number.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from ml_debugger.core.zones import ZONES
from ml_debugger.errors import UsageError

# Columns a condition or a --sort may name: the scores and per-sample outputs people filter on.
NUMERIC_COLUMNS = (
    "error_proba",
    "ood_score",
    "confidence",
    "margin",
    "entropy",
    "energy",
    "stability",
    "flip_rate",
    "perturbed_confidence",
    "feature_norm",
    "knn_disagree",
    "trust_score",
    "knn_distance",
)
TEXT_COLUMNS = ("zone", "predicted", "label_name", "error_code", "sample_id")
COLUMNS = NUMERIC_COLUMNS + TEXT_COLUMNS
OPERATORS = (">=", "<=", "==", "!=", ">", "<")
# The comparison of each operator, for Polars expressions and NumPy arrays alike.
OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    """One parsed condition: ``column op value``."""

    column: str
    op: str
    value: float | str

    def expr(self) -> pl.Expr:
        return OPS[self.op](pl.col(self.column), self.value)  # null compares to null, which a filter drops

    def __str__(self) -> str:
        value = f"{self.value:g}" if isinstance(self.value, float) else self.value
        return f"{self.column}{self.op}{value}"


# Per-box columns of a detection run, for bbox filters (``BBoxStrategy``).
BOX_NUMERIC_COLUMNS = (
    "error_proba",
    "det_error_proba",
    "cls_error_proba",
    "ood_score",
    "score",
    "entropy",
    "margin",
    "pred_size",
    "n_candidates",
    "candidate_iou",
    "max_iou_other",
    "knn_error",
    "knn_distance",
)
BOX_TEXT_COLUMNS = ("zone", "predicted", "error_code", "sample_id")


def check_column(name: str, what: str = "column", columns: tuple[str, ...] = COLUMNS) -> str:
    """``name`` if it is one of ``columns`` (by default those a query may use), else a UsageError
    naming the valid ones."""
    if name in columns:
        return name
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(f"unknown {what} {name!r}; {hint}choose from: {', '.join(columns)}")


def parse_condition(
    text: str, numeric: tuple[str, ...] = NUMERIC_COLUMNS, textual: tuple[str, ...] = TEXT_COLUMNS
) -> Condition:
    """Parse ``COLUMN OP VALUE``.

    Raises
    ------
    UsageError
        Unknown column or operator, or a value that is not a number for a numeric column.
    """
    m = _CONDITION.match(text)
    if not m:
        raise UsageError(
            f"condition {text!r} is not COLUMN OP VALUE (e.g. error_proba>=0.8); operators: {' '.join(OPERATORS)}"
        )
    column, op, raw = m.groups()
    check_column(column, columns=numeric + textual)
    if raw == "":
        raise UsageError(f"condition {text!r} has no value after {op!r}")
    if column in numeric:
        try:
            value: float | str = float(raw)
        except ValueError:
            raise UsageError(f"condition {text!r}: {raw!r} is not a number, and {column} is numeric") from None
        if value != value:  # NaN compares false with everything
            raise UsageError(f"condition {text!r}: NaN is not a value to compare with")
        return Condition(column, op, value)
    if op not in ("==", "!="):
        raise UsageError(f"condition {text!r}: {column} is text; use == or !=")
    if column == "zone":
        check_zone(raw)
    return Condition(column, op, raw)


def parse_conditions(
    items: list[Any], numeric: tuple[str, ...] = NUMERIC_COLUMNS, textual: tuple[str, ...] = TEXT_COLUMNS
) -> list[Condition]:
    """Conditions from strings or ``{"column": "OP VALUE"}`` mappings (the Python form)."""
    out: list[Condition] = []
    for item in items:
        if isinstance(item, str):
            out.append(parse_condition(item, numeric, textual))
        elif isinstance(item, dict):
            out.extend(parse_condition(f"{column}{rule}", numeric, textual) for column, rule in item.items())
        else:
            raise UsageError(f"condition {item!r} must be a string like 'error_proba>=0.8' or a mapping")
    return out


def check_zone(name: str) -> str:
    if name in ZONES:
        return name
    close = difflib.get_close_matches(name, ZONES, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(f"unknown zone {name!r}; {hint}choose from: {', '.join(ZONES)}")


def parse_zones(text: str | list[str] | None) -> list[str]:
    """Zones from ``"hotspot,critical_hotspot"`` or a list, each checked."""
    if not text:
        return []
    names = text.split(",") if isinstance(text, str) else list(text)
    return [check_zone(n.strip()) for n in names if n.strip()]


def filter_expr(zones: list[str], conditions: list[Condition]) -> pl.Expr:
    """Rows in any of ``zones`` (all when empty) that meet every condition (null fails).

    Plain comparisons joined by ``&``, so a lazy scan can push them down into DuckDB.
    """
    parts = ([pl.col("zone").is_in(zones)] if zones else []) + [c.expr() for c in conditions]
    if not parts:
        return pl.lit(True)
    expr = parts[0]
    for p in parts[1:]:
        expr = expr & p
    return expr  # a filter keeps only rows where this is true: null (a missing value) fails
