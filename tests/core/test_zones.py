"""Zones partition every row in precedence order; thresholds are validated; codes read well."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_debugger.core.config import load_config
from ml_debugger.core.metrics import upper_bound
from ml_debugger.core.zones import PRECEDENCE, ZONES, assign, calibrate_stable, error_codes, parse_rules
from ml_debugger.errors import UsageError

CLASSES = ["cat", "dog", "fox"]


def _rules(**overrides):
    section = {**load_config()["zones"], "hotspot_stability": 0.9, **overrides}
    return parse_rules(section, CLASSES)


def _frame(n: int, seed: int, stability: bool) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {
        "error_proba": rng.random(n),
        "confidence": rng.random(n),
        "ood_score": rng.random(n),
        "pred": rng.integers(0, 3, n).astype(np.int32),
        "stability": rng.random(n) if stability else [None] * n,
        "flip_rate": rng.integers(0, 5, n) / 4 if stability else [None] * n,
    }
    return pl.DataFrame(cols, schema_overrides={"stability": pl.Float64, "flip_rate": pl.Float64})


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**16), stability=st.booleans(), per_class=st.booleans())
def test_zones_partition_every_row_in_precedence_order(n: int, seed: int, stability: bool, per_class: bool) -> None:
    rules = _rules(per_class={"dog": {"critical_confidence": 0.3, "ood": 0.5}} if per_class else {})
    z = assign(_frame(n, seed, stability), rules)
    assert z["zone"].null_count() == 0 and set(z["zone"]) <= set(ZONES)
    th = rules.thresholds
    dog = z["pred"] == 1
    ood = z["ood_score"] >= pl.Series(np.where(dog & per_class, 0.5, th["ood"]))
    assert (z.filter(ood)["zone"] == "aleatoric_hotspot").all()
    assert (z.filter(~ood)["zone"] != "aleatoric_hotspot").all()
    crit_conf = np.where(dog & per_class, 0.3, th["critical_confidence"])
    crit = ~ood & (z["error_proba"] >= th["critical_error_proba"]) & (z["confidence"] >= pl.Series(crit_conf))
    assert (z.filter(crit)["zone"] == "critical_hotspot").all()
    rest = z.filter(~ood & ~crit)
    assert (rest.filter(pl.col("confidence") < th["recessive_confidence"])["zone"] == "recessive_hotspot").all()
    stable = z.filter(pl.col("zone") == "stable_coverage")
    assert (stable["error_proba"] <= th["stable_error_proba"]).all()
    assert (stable["confidence"] >= th["stable_confidence"]).all()
    if stability:
        assert (stable["flip_rate"] <= th["stable_flip_rate"]).all()


def test_precedence_is_the_design_order() -> None:
    assert PRECEDENCE[0] == "aleatoric_hotspot" and PRECEDENCE[-1] == "operational_coverage"
    row = pl.DataFrame(
        {"error_proba": [0.9], "confidence": [0.95], "ood_score": [0.999], "pred": [0],
         "stability": [0.1], "flip_rate": [1.0]}
    )  # fmt: skip
    assert assign(row, _rules())["zone"][0] == "aleatoric_hotspot"  # outlier beats everything
    assert assign(row.with_columns(ood_score=pl.lit(0.1)), _rules())["zone"][0] == "critical_hotspot"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ood": 1.5}, "ood = 1.5 is out of range"),
        ({"critical_confidence": "high"}, "critical_confidence = 'high' is out of range"),
        ({"mode": "magic"}, "mode = 'magic'; choose from: calibrated, fixed"),
        ({"coverage_candidates": 0}, "coverage_candidates = 0; give a whole number from 1 to 1000"),
        ({"per_class": {"cow": {"ood": 0.5}}}, "unknown class 'cow'; classes: cat, dog, fox"),
        ({"per_class": {"cat": {"odd": 0.5}}}, "unknown key(s) odd"),
        ({"per_class": {"cat": {"ood": -1}}}, "per_class.cat: ood = -1 is out of range"),
    ],
)
def test_bad_thresholds_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _rules(**overrides)


def test_calibrated_cutoff_keeps_the_bound_for_the_chosen_candidate() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    ep = rng.random(n)
    err = rng.random(n) < ep * 0.05  # the error rate grows with error_proba
    frame = pl.DataFrame(
        {"error_proba": ep, "confidence": np.ones(n), "ood_score": np.zeros(n), "pred": np.zeros(n, dtype=np.int32),
         "stability": [None] * n, "flip_rate": [None] * n},
        schema_overrides={"stability": pl.Float64, "flip_rate": pl.Float64},
    )  # fmt: skip
    rules = _rules(hotspot_error_proba=1.0, critical_error_proba=1.0)
    fitted, cal = calibrate_stable(frame, pl.Series(err), rules, target=0.02, level=0.95, candidates=20)
    assert cal.cutoff is not None and cal.upper_bound < 0.02 and cal.candidates == 20
    inside = ep <= cal.cutoff
    assert inside.sum() == cal.n and err[inside].sum() == cal.errors
    # Bonferroni over 20 candidates: the bound is taken at 1 - 0.05 / 20
    assert math.isclose(cal.upper_bound, upper_bound(cal.errors, cal.n, 1 - 0.05 / 20))
    assert cal.n % 200 == 0  # candidates admit 1/20, 2/20, ... of the eligible rows (no ties here)
    # a single candidate (everything) fails here; finer grids never choose a looser cut-off than rows allow
    _, one = calibrate_stable(frame, pl.Series(err), rules, target=0.02, level=0.95, candidates=1)
    assert one.cutoff is None
    zoned = assign(frame, fitted)
    assert (zoned.filter(pl.col("error_proba") <= cal.cutoff)["zone"] == "stable_coverage").all()
    assert (zoned.filter(pl.col("error_proba") > cal.cutoff)["zone"] != "stable_coverage").all()


def test_calibration_with_no_safe_cutoff_leaves_stable_coverage_empty() -> None:
    frame = pl.DataFrame(
        {"error_proba": [0.01] * 50, "confidence": [0.99] * 50, "ood_score": [0.1] * 50, "pred": [0] * 50,
         "stability": [None] * 50, "flip_rate": [None] * 50},
        schema_overrides={"stability": pl.Float64, "flip_rate": pl.Float64},
    )  # fmt: skip
    fitted, cal = calibrate_stable(frame, pl.Series([False] * 50), _rules(), target=0.01, level=0.95)
    assert cal.cutoff is None  # 50 clean samples cannot show a rate below 1% with 95% confidence
    assert (assign(frame, fitted)["zone"] != "stable_coverage").all()


def test_error_codes_use_class_names_splits_and_knn_vouching() -> None:
    frame = pl.DataFrame(
        {"label": [0, 0, 1, 2], "pred": [1, 1, 1, 0], "flip_classes": [[], [2], [], [1, 2]],
         "zone": ["critical_hotspot", "hotspot", "stable_coverage", "aleatoric_hotspot"], "knn_vote": [0, 0, 1, 1]},
        schema_overrides={"flip_classes": pl.List(pl.Int32)},
    )  # fmt: skip
    codes = frame.select(error_codes(frame, CLASSES))["error_code"].to_list()
    assert codes == ["CLScat->dog**", "CLScat->dog|fox", None, "CLSfox->cat|dog|fox"]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), seed=st.integers(0, 2**16), stability=st.booleans(), per_class=st.booleans())
def test_numpy_zones_equal_the_polars_zones(n: int, seed: int, stability: bool, per_class: bool) -> None:
    from ml_debugger.core.zones import assign_arrays

    # Overrides for the first classes only: the last class falls back to the global thresholds.
    overrides = {"cat": {"ood": 0.6}, "dog": {"stable_confidence": 0.2, "ood": 0.4}}
    rules = _rules(per_class=overrides if per_class else {})
    frame = _frame(n, seed, stability)
    expected = assign(frame, rules)["zone"].to_list()
    got = assign_arrays(
        rules,
        error_proba=frame["error_proba"].to_numpy(),
        confidence=frame["confidence"].to_numpy(),
        pred=frame["pred"].to_numpy(),
        ood_score=frame["ood_score"].to_numpy(),
        stability=frame["stability"].to_numpy() if stability else None,
        flip_rate=frame["flip_rate"].to_numpy() if stability else None,
    )
    assert list(got) == expected
