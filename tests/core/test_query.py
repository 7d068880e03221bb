"""Query strategies and conditions on a real scored digits pool (property tests, fixed seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_debugger.core.conditions import filter_expr, parse_condition, parse_conditions, parse_zones
from ml_debugger.core.query import STRATEGIES, QuerySpec, candidates, check, parse_mix
from ml_debugger.core.store import Store
from ml_debugger.core.zones import ZONES
from ml_debugger.errors import UsageError


@pytest.fixture(scope="module")
def pool(scored: Path) -> tuple[pl.DataFrame, object]:
    with Store(scored, read_only=True) as store:
        (name,) = store.result_names()
        frame = candidates(store, name, "pool", store.require_run("pool").classes).collect()
        ids, feats = store.read_features("pool")
    index = {s: i for i, s in enumerate(ids)}

    def features(sample_ids: pl.Series) -> np.ndarray:
        return feats[[index[s] for s in sample_ids]]

    return frame, features


CONDITIONS = ["error_proba>=0.2", "confidence<0.95", "ood_score<=0.99", "margin>0.05", "entropy<2", "zone!=hotspot"]


@settings(max_examples=40, deadline=None)
@given(
    strategy=st.sampled_from(["high_error_proba", "low_error_proba", "random", "class_balanced", "diverse"]),
    n=st.integers(1, 120),
    zones=st.lists(st.sampled_from(ZONES), max_size=3, unique=True),
    conds=st.lists(st.sampled_from(CONDITIONS), max_size=3, unique=True),
    seed=st.integers(0, 5),
)
def test_answers_are_filtered_subsets_without_duplicates(pool, strategy, n, zones, conds, seed) -> None:
    frame, features = pool
    spec = check(QuerySpec(strategy=strategy, n=n, zones=zones, conditions=conds, seed=seed))
    cands = frame.filter(filter_expr(parse_zones(zones), parse_conditions(conds)))
    got, _ = STRATEGIES[strategy](cands, n, spec, features)
    ids = got["sample_id"].to_list()
    assert len(ids) == len(set(ids)) and len(ids) <= n
    assert set(ids) <= set(cands["sample_id"])
    assert len(ids) == min(n, cands.height) or strategy == "random"
    if zones:
        assert got["zone"].is_in(zones).all()
    for c in parse_conditions(conds):
        assert got.select(c.expr()).to_series().all(), str(c)
    again, _ = STRATEGIES[strategy](cands, n, spec, features)
    assert again["sample_id"].to_list() == ids  # same seed, same answer


def test_sorted_strategies_rank_by_error_proba(pool) -> None:
    frame, features = pool
    high, _ = STRATEGIES["high_error_proba"](frame, 50, QuerySpec(), features)
    assert high["error_proba"].is_sorted(descending=True)
    assert high["error_proba"].min() >= frame["error_proba"].sort(descending=True)[49]
    low, _ = STRATEGIES["low_error_proba"](frame, 50, QuerySpec(strategy="low_error_proba"), features)
    assert low["error_proba"].is_sorted()
    by, _ = STRATEGIES["sort"](frame, 20, check(QuerySpec(strategy="sort", sort="confidence:asc")), features)
    assert by["confidence"].is_sorted()


def test_random_draws_within_the_value_range_and_depends_on_the_seed(pool) -> None:
    frame, features = pool
    spec = QuerySpec(strategy="random", min_value=0.3, max_value=0.7, seed=1)
    got, _ = STRATEGIES["random"](frame, 10, spec, features)
    assert got["error_proba"].is_between(0.3, 0.7).all()
    spec2 = QuerySpec(strategy="random", min_value=0.3, max_value=0.7, seed=2)
    other, _ = STRATEGIES["random"](frame, 10, spec2, features)
    assert set(got["sample_id"]) != set(other["sample_id"])


def test_class_balanced_meets_quotas_or_says_which_class_ran_short(pool) -> None:
    frame, features = pool
    got, notes = STRATEGIES["class_balanced"](frame, 100, QuerySpec(min_per_class=8), features)
    counts = dict(got.group_by("predicted").len().iter_rows())
    available = dict(frame.group_by("predicted").len().iter_rows())
    for cls, have in available.items():
        assert counts.get(cls, 0) >= min(8, have)
    few = frame.filter(pl.col("predicted") != "1").vstack(frame.filter(pl.col("predicted") == "1").head(2))
    _, notes = STRATEGIES["class_balanced"](few, 100, QuerySpec(min_per_class=8), features)
    assert any("1 (2)" in n for n in notes)


def test_diverse_spreads_over_feature_space(pool) -> None:
    frame, features = pool
    div, _ = STRATEGIES["diverse"](frame, 30, QuerySpec(strategy="diverse"), features)
    top, _ = STRATEGIES["high_error_proba"](frame, 30, QuerySpec(), features)

    def spread(ids: pl.Series) -> float:
        x = features(ids)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return float((1 - x @ x.T).mean())

    assert spread(div["sample_id"]) > spread(top["sample_id"])
    assert div["predicted"].n_unique() >= 8  # most classes represented


def test_mix_splits_the_budget_and_never_picks_twice(pool) -> None:
    frame, features = pool
    mix = parse_mix("high_error_proba=0.6,diverse=0.2,random=0.2")
    got, _ = STRATEGIES["mix"](frame, 50, QuerySpec(mix=mix), features)
    assert got.height == 50 and got["sample_id"].n_unique() == 50
    assert dict(got.group_by("picked_by").len().iter_rows()) == {"high_error_proba": 30, "diverse": 10, "random": 10}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("error_prob>=0.8", "unknown column 'error_prob'; did you mean 'error_proba'?"),
        ("error_proba=>0.8", "is not COLUMN OP VALUE"),
        ("error_proba>=0;drop table x", "'0;drop table x' is not a number"),
        ("error_proba", "is not COLUMN OP VALUE"),
        ("zone>hotspot", "zone is text; use == or !="),
        ("zone==hotpsot", "unknown zone 'hotpsot'; did you mean 'hotspot'?"),
        ("confidence>=nan", "NaN"),
    ],
)
def test_malformed_conditions_are_named(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_condition(text)


def test_python_form_and_spec_checks() -> None:
    assert [str(c) for c in parse_conditions([{"error_proba": ">=0.8"}, "confidence>0.9"])] == [
        "error_proba>=0.8",
        "confidence>0.9",
    ]
    for spec, message in [
        (QuerySpec(n=0), "--n 0"),
        (QuerySpec(strategy="best"), "unknown strategy 'best'"),
        (QuerySpec(mix={"best": 1.0}), "unknown strategy 'best'"),
        (QuerySpec(sort="nope:asc", strategy="sort"), "unknown --sort column 'nope'"),
        (QuerySpec(zones=["hotpsot"]), "did you mean 'hotspot'"),
    ]:
        with pytest.raises(UsageError, match=message):
            check(spec)
    with pytest.raises(UsageError, match="STRATEGY=WEIGHT"):
        parse_mix("high_error_proba")
