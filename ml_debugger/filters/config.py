"""``FilterConfig``: which samples a real-time filter flags (zones OR, conditions AND).

The same language as ``mldbg query --zones/--where``, validated when the filter is built, so a
typo fails at construction rather than mid-inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ml_debugger.core.conditions import OPS, Condition, filter_expr, parse_conditions, parse_zones
from ml_debugger.errors import UsageError

_KEYS = ("target_zones", "conditions")


@dataclass(frozen=True)
class FilterConfig:
    """Flag a sample when its zone is one of ``target_zones`` (if any) and every condition holds.

    Examples
    --------
    >>> FilterConfig.from_value({"target_zones": ["critical_hotspot"]}).target_zones
    ['critical_hotspot']
    >>> str(FilterConfig.from_value({"conditions": [{"error_proba": ">=0.8"}]}).parsed[0])
    'error_proba>=0.8'
    """

    target_zones: list[str] = field(default_factory=list)
    conditions: list[Any] = field(default_factory=list)
    parsed: list[Condition] = field(default_factory=list, repr=False)

    @classmethod
    def from_value(cls, value: FilterConfig | dict[str, Any]) -> FilterConfig:
        """A validated config from a ``FilterConfig`` or a dict with ``target_zones``/``conditions``."""
        if isinstance(value, FilterConfig):
            value = {"target_zones": value.target_zones, "conditions": value.conditions}
        if not isinstance(value, dict):
            raise UsageError(f"filter_config must be a dict or FilterConfig, not {type(value).__name__}")
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise UsageError(f"filter_config has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")
        zones = parse_zones(list(value.get("target_zones") or []))
        conditions = list(value.get("conditions") or [])
        parsed = parse_conditions(conditions)
        if not zones and not parsed:
            raise UsageError("filter_config selects nothing: give target_zones and/or conditions")
        return cls(zones, conditions, parsed)

    def expr(self) -> pl.Expr:
        return filter_expr(self.target_zones, self.parsed)

    def flags(self, columns: dict[str, Any]) -> list[bool]:
        """The same test as ``expr`` on NumPy arrays (the real-time path); a missing value fails."""
        import numpy as np

        n = len(columns["zone"])
        keep = np.ones(n, dtype=bool)
        if self.target_zones:
            keep = np.zeros(n, dtype=bool)
            for zone in self.target_zones:  # a few zones: cheaper than np.isin at real-time sizes
                keep |= columns["zone"] == zone
        for c in self.parsed:
            values = columns.get(c.column)
            if values is None:
                return [False] * n
            v = np.asarray(values)
            with np.errstate(invalid="ignore"):
                hit = OPS[c.op](v, c.value)
            if v.dtype.kind == "f":
                hit &= ~np.isnan(v)
            keep &= np.asarray(hit, dtype=bool)
        return keep.tolist()
