"""Detector metrics and binomial bounds against direct computations and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from ml_debugger.core import metrics as M


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 80), seed=st.integers(0, 2**16), ties=st.booleans())
def test_auroc_and_aupr_match_sklearn(n: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = rng.normal(size=n) + y
    if ties:
        s = np.round(s)
    if y.all() or not y.any():
        assert M.auroc(y, s) is None
        return
    assert math.isclose(M.auroc(y, s), roc_auc_score(y, s), abs_tol=1e-12)
    assert math.isclose(M.aupr(y, s), average_precision_score(y, s), abs_tol=1e-12)


def test_fpr_at_95_tpr_counts_correct_samples_above_the_threshold() -> None:
    y = np.array([1] * 20 + [0] * 10, dtype=bool)
    s = np.r_[np.arange(20) + 10.0, np.arange(10) * 2.0]  # errors 10..29, correct 0..18
    # 95% of 20 errors = 19 caught: threshold 11 → correct samples ≥ 11: 12, 14, 16, 18
    assert M.fpr_at_tpr(y, s) == 0.4


def test_ece_is_zero_for_a_perfectly_calibrated_bin_and_positive_otherwise() -> None:
    p = np.full(1000, 0.25)
    y = np.arange(1000) % 4 == 0
    assert M.ece(y, p) == 0.0
    assert math.isclose(M.ece(y, np.full(1000, 0.75)), 0.5)


def test_binomial_cdf_and_clopper_pearson_upper_bound() -> None:
    x, n, p = np.array([0, 3, 10]), np.array([50, 40, 10]), 0.07
    pmf = lambda i, nn: math.comb(nn, i) * p**i * (1 - p) ** (nn - i)  # noqa: E731
    direct = [sum(pmf(i, nn) for i in range(xx + 1)) for xx, nn in zip(x, n, strict=True)]
    assert np.allclose(M.binom_cdf(x, n, p), direct)
    # zero errors in n: the bound solves (1 - p)^n = 0.05
    assert math.isclose(M.upper_bound(0, 300), 1 - 0.05 ** (1 / 300), rel_tol=1e-9)
    assert math.isclose(M.upper_bound(3, 100), 0.0757, abs_tol=1e-4)  # textbook value
    lo, hi = M.wilson(5, 100)
    assert lo < 0.05 < hi and math.isclose(hi, 0.1118, abs_tol=1e-3)
