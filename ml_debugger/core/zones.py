"""Issue Categories (zones): six Polars rules over error_proba, confidence, stability and ood_score.

Rules apply in precedence order, so every scored sample gets exactly one zone::

    aleatoric_hotspot     ood_score ≥ ood
    critical_hotspot      error_proba ≥ critical_error_proba and confidence ≥ critical_confidence
    recessive_hotspot     confidence < recessive_confidence
    hotspot               flip_rate ≥ hotspot_flip_rate or stability < hotspot_stability
                          or error_proba ≥ hotspot_error_proba
    stable_coverage       error_proba ≤ stable_error_proba and confidence ≥ stable_confidence
                          and flip_rate ≤ stable_flip_rate
    operational_coverage  everything else

Without ``--stability`` the stability and flip-rate parts of ``hotspot`` and
``stable_coverage`` are skipped (they cannot be measured); the rest applies unchanged.
Thresholds come from the ``zones`` section of the config, with per-class overrides keyed by
the predicted class's name. In ``calibrated`` mode ``stable_error_proba`` is fitted on the
labelled run's out-of-fold scores (``calibrate_stable``) and ``hotspot_stability`` defaults
to a low quantile of the labelled run's stability.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import polars as pl

from ml_debugger.errors import UsageError

ZONES = (
    "stable_coverage",
    "operational_coverage",
    "hotspot",
    "recessive_hotspot",
    "critical_hotspot",
    "aleatoric_hotspot",
)
PRECEDENCE = (
    "aleatoric_hotspot",
    "critical_hotspot",
    "recessive_hotspot",
    "hotspot",
    "stable_coverage",
    "operational_coverage",
)
LABELS = {
    "stable_coverage": "Highly Stable",
    "operational_coverage": "Stable",
    "hotspot": "Unstable",
    "recessive_hotspot": "Under-Confidence",
    "critical_hotspot": "Over-Confidence",
    "aleatoric_hotspot": "Outlier",
}
COLLECTION = {
    "stable_coverage": "not needed",
    "operational_coverage": "low priority",
    "hotspot": "recommended",
    "recessive_hotspot": "recommended",
    "critical_hotspot": "highest priority",
    "aleatoric_hotspot": "review needed",
}
# The thresholds a zone rule reads; every one may be overridden per class.
THRESHOLD_KEYS = (
    "ood",
    "critical_error_proba",
    "critical_confidence",
    "recessive_confidence",
    "hotspot_error_proba",
    "hotspot_flip_rate",
    "hotspot_stability",
    "stable_error_proba",
    "stable_confidence",
    "stable_flip_rate",
)
MODES = ("calibrated", "fixed")


@dataclass(frozen=True)
class ZoneRules:
    """Global thresholds plus per-class overrides (keyed by class index)."""

    thresholds: dict[str, float | None]
    per_class: dict[int, dict[str, float]]

    def to_dict(self, classes: list[str]) -> dict[str, Any]:
        return {
            "global": self.thresholds,
            "per_class": {classes[i]: v for i, v in sorted(self.per_class.items())},
        }

    @cached_property
    def tables(self) -> dict[str, tuple[float, Any]]:
        """Per key: the global threshold (NaN when unset) and, when some class overrides it, an
        array of thresholds by predicted class whose last entry is the global one (for classes
        past the overrides); built once, for ``assign_arrays``."""
        import numpy as np

        out: dict[str, tuple[float, Any]] = {}
        last = max(self.per_class, default=-1) + 1
        for key in THRESHOLD_KEYS:
            g = self.thresholds.get(key)
            default = np.nan if g is None else float(g)
            overrides = {c: v[key] for c, v in self.per_class.items() if key in v}
            table = None
            if overrides:
                table = np.full(last + 1, default)
                for c, v in overrides.items():
                    table[c] = v
            out[key] = (default, table)
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any], classes: list[str]) -> ZoneRules:
        index = {name: i for i, name in enumerate(classes)}
        return cls(dict(doc["global"]), {index[name]: dict(v) for name, v in doc.get("per_class", {}).items()})


def _check_value(key: str, value: Any, where: str) -> float | None:
    if value is None and key == "hotspot_stability":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise UsageError(f"{where}: {key} = {value!r} is out of range; give a number between 0 and 1")
    return float(value)


def parse_rules(section: dict[str, Any], classes: list[str], where: str = "zones") -> ZoneRules:
    """Validate the ``zones`` config section into rules for these classes.

    Raises
    ------
    UsageError
        A threshold outside [0, 1], an unknown mode, class or key (naming the valid ones).
    """
    if section.get("mode") not in MODES:
        raise UsageError(f"{where}: mode = {section.get('mode')!r}; choose from: {', '.join(MODES)}")
    for key in ("coverage_target", "coverage_level", "hotspot_stability_quantile"):
        _check_value(key, section.get(key), where)
    cands = section.get("coverage_candidates")
    if isinstance(cands, bool) or not isinstance(cands, int) or not 1 <= cands <= 1000:
        raise UsageError(f"{where}: coverage_candidates = {cands!r}; give a whole number from 1 to 1000")
    thresholds = {key: _check_value(key, section.get(key), where) for key in THRESHOLD_KEYS}
    per_class: dict[int, dict[str, float]] = {}
    raw = section.get("per_class") or {}
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: per_class must map class names to thresholds, e.g. {{cat: {{ood: 0.95}}}}")
    index = {name: i for i, name in enumerate(classes)}
    for name, overrides in raw.items():
        if str(name) not in index:
            raise UsageError(f"{where}: per_class names unknown class {name!r}; classes: {', '.join(classes)}")
        if not isinstance(overrides, dict):
            raise UsageError(f"{where}: per_class.{name} must be a mapping of threshold: value")
        unknown = sorted(set(overrides) - set(THRESHOLD_KEYS))
        if unknown:
            raise UsageError(
                f"{where}: per_class.{name} has unknown key(s) {', '.join(map(str, unknown))}; "
                f"valid keys: {', '.join(THRESHOLD_KEYS)}"
            )
        checked = {k: _check_value(k, v, f"{where}: per_class.{name}") for k, v in overrides.items()}
        per_class[index[str(name)]] = {k: v for k, v in checked.items() if v is not None}
    return ZoneRules(thresholds, per_class)


def threshold_expr(rules: ZoneRules, key: str) -> pl.Expr:
    """The threshold ``key`` for each row's predicted class, as an expression."""
    default = rules.thresholds.get(key)
    mapping = {cls: v[key] for cls, v in rules.per_class.items() if key in v}
    base = pl.lit(default, dtype=pl.Float64)
    if not mapping:
        return base
    return pl.col("pred").replace_strict(mapping, default=base, return_dtype=pl.Float64)


_th = threshold_expr


def zone_expr(rules: ZoneRules) -> pl.Expr:
    """One expression giving every row its zone; rows need error_proba, confidence, pred,
    ood_score, stability and flip_rate (the last two may be null: no ``--stability``)."""
    ep, conf = pl.col("error_proba"), pl.col("confidence")
    stab, flip = pl.col("stability"), pl.col("flip_rate")
    measured = stab.is_not_null()
    unstable = (
        (measured & (flip >= _th(rules, "hotspot_flip_rate"))).fill_null(False)
        | (measured & (stab < _th(rules, "hotspot_stability"))).fill_null(False)
        | (ep >= _th(rules, "hotspot_error_proba"))
    )
    steady = (~measured | (flip <= _th(rules, "stable_flip_rate"))).fill_null(True)
    return (
        pl.when(pl.col("ood_score") >= _th(rules, "ood"))
        .then(pl.lit("aleatoric_hotspot"))
        .when((ep >= _th(rules, "critical_error_proba")) & (conf >= _th(rules, "critical_confidence")))
        .then(pl.lit("critical_hotspot"))
        .when(conf < _th(rules, "recessive_confidence"))
        .then(pl.lit("recessive_hotspot"))
        .when(unstable)
        .then(pl.lit("hotspot"))
        .when((ep <= _th(rules, "stable_error_proba")) & (conf >= _th(rules, "stable_confidence")) & steady)
        .then(pl.lit("stable_coverage"))
        .otherwise(pl.lit("operational_coverage"))
        .alias("zone")
    )


def assign_arrays(
    rules: ZoneRules,
    *,
    error_proba: Any,
    confidence: Any,
    pred: Any,
    ood_score: Any,
    stability: Any = None,
    flip_rate: Any = None,
) -> Any:
    """``zone_expr`` for NumPy arrays (the real-time path): the same rules, the same precedence.

    ``stability``/``flip_rate`` None (or NaN) = not measured. Returns an array of zone names.
    """
    import numpy as np

    n = len(error_proba)
    pred = np.asarray(pred, dtype=np.int64)
    tables = rules.tables

    def th(key: str) -> Any:
        default, table = tables[key]
        return default if table is None else table[np.minimum(pred, len(table) - 1)]

    ep = np.asarray(error_proba, dtype=np.float64)
    conf = np.asarray(confidence, dtype=np.float64)
    unstable = ep >= th("hotspot_error_proba")
    steady: Any = True
    if stability is not None:
        stab = np.asarray(stability, dtype=np.float64)
        flip = np.full(n, np.nan) if flip_rate is None else np.asarray(flip_rate, dtype=np.float64)
        measured = ~np.isnan(stab)  # NaN: not measured; comparisons with NaN are False
        unstable |= measured & ((flip >= th("hotspot_flip_rate")) | (stab < th("hotspot_stability")))
        steady = ~measured | (flip <= th("stable_flip_rate"))
    # The lowest-precedence rule first, so each higher one overwrites it.
    zone = np.full(n, len(PRECEDENCE) - 1, dtype=np.int8)
    zone[(ep <= th("stable_error_proba")) & (conf >= th("stable_confidence")) & steady] = 4
    zone[unstable] = 3
    zone[conf < th("recessive_confidence")] = 2
    zone[(ep >= th("critical_error_proba")) & (conf >= th("critical_confidence"))] = 1
    zone[np.asarray(ood_score, dtype=np.float64) >= th("ood")] = 0
    return _zone_names()[zone]


@functools.cache
def _zone_names() -> Any:
    import numpy as np

    return np.asarray(PRECEDENCE)


def assign(frame: pl.DataFrame, rules: ZoneRules) -> pl.DataFrame:
    """``frame`` with a ``zone`` column."""
    return frame.with_columns(zone_expr(rules))


@dataclass(frozen=True)
class Calibration:
    """The fitted stable_coverage cut-off and the evidence behind it."""

    cutoff: float | None
    n: int
    errors: int
    upper_bound: float | None  # at level 1 − (1 − level) / candidates: what the promise rests on
    target: float
    level: float
    candidates: int = 20

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def calibrate_stable(
    frame: pl.DataFrame,
    is_error: pl.Series,
    rules: ZoneRules,
    *,
    target: float,
    level: float,
    candidates: int = 20,
) -> tuple[ZoneRules, Calibration]:
    """The largest ``stable_error_proba`` whose stable_coverage error rate has a one-sided
    Clopper-Pearson upper bound below ``target`` on these (out-of-fold) rows.

    ``candidates`` cut-offs are tested, at the error_proba quantiles that admit 1/m, 2/m, …
    of the rows the rule could take; each is a binomial test of "error rate ≥ target" at
    level (1 − ``level``) / m (Bonferroni), so the promise holds with probability ``level``
    for the cut-off chosen among them ("Learn then Test", Angelopoulos et al. 2021), not just
    for each one alone. Returns the rules with the cut-off set (0 when no cut-off keeps the
    promise: stable_coverage is then empty) and the evidence.
    """
    import numpy as np

    from ml_debugger.core.metrics import binom_cdf, upper_bound

    probe = ZoneRules({**rules.thresholds, "stable_error_proba": 1.0}, rules.per_class)
    zoned = frame.with_columns(is_error.alias("_err")).with_columns(zone_expr(probe))
    cand = zoned.filter(pl.col("zone") == "stable_coverage").sort("error_proba")
    ep = cand["error_proba"].to_numpy().astype(np.float64)
    err = cand["_err"].to_numpy().astype(np.int64)
    n = np.arange(1, len(ep) + 1)
    x = np.cumsum(err)
    m = max(1, int(candidates))
    alpha = (1.0 - level) / m
    passed = np.zeros(0, dtype=np.int64)
    if len(ep):
        group_end = np.r_[np.flatnonzero(ep[1:] != ep[:-1]), len(ep) - 1]
        # candidate j admits the whole tied group holding the ceil(N j / m)-th row
        wanted = np.ceil(len(ep) * np.arange(1, m + 1) / m).astype(np.int64) - 1
        idx = np.unique(group_end[np.searchsorted(group_end, wanted)])
        idx = idx[x[idx] < target * n[idx]]  # a bound below target needs an observed rate below it
        passed = idx[binom_cdf(x[idx], n[idx], target) < alpha]
    if len(passed) == 0:
        cal = Calibration(None, 0, 0, None, target, level, m)
        return ZoneRules({**rules.thresholds, "stable_error_proba": 0.0}, rules.per_class), cal
    i = int(passed.max())
    bound = upper_bound(int(x[i]), int(n[i]), 1.0 - alpha)
    cal = Calibration(float(ep[i]), int(n[i]), int(x[i]), bound, target, level, m)
    return ZoneRules({**rules.thresholds, "stable_error_proba": float(ep[i])}, rules.per_class), cal


def error_codes(frame: pl.DataFrame, classes: list[str]) -> pl.Expr:
    """``CLS{t}->{y}`` for each wrong prediction (class names), ``|{y2}`` per class the perturbed
    predictions went to, ``**`` in critical/aleatoric when the kNN vote says t; null when right."""
    names = pl.Series(classes, dtype=pl.String)
    true = pl.col("label").replace_strict(list(range(len(classes))), names, default=None)
    pred = pl.col("pred").replace_strict(list(range(len(classes))), names, default=None)
    split = (
        pl.col("flip_classes")
        .list.eval(pl.element().replace_strict(list(range(len(classes))), names, default=None))
        .list.join("|")
    )
    vouched = pl.col("zone").is_in(["critical_hotspot", "aleatoric_hotspot"]) & (pl.col("knn_vote") == pl.col("label"))
    code = pl.concat_str(
        pl.lit("CLS"),
        true,
        pl.lit("->"),
        pred,
        pl.when(split.fill_null("") != "").then(pl.lit("|") + split).otherwise(pl.lit("")),
        pl.when(vouched).then(pl.lit("**")).otherwise(pl.lit("")),
    )
    return pl.when(pl.col("label").is_not_null() & (pl.col("label") != pl.col("pred"))).then(code).alias("error_code")
