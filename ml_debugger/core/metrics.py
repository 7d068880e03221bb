"""Error-detection metrics and binomial bounds: pure numpy functions, scores in, numbers out.

A *detector* scores each sample; a higher score means "more likely an error". ``y`` is 1 for
an error (prediction ≠ label) and 0 otherwise.
"""

from __future__ import annotations

import math

import numpy as np

# Equal-width bins of the expected calibration error, as in Guo et al. 2017.
ECE_BINS = 15


def _ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""

    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    first = np.r_[True, sorted_s[1:] != sorted_s[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = avg[group]
    return ranks


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None when only one class is present."""

    y = np.asarray(y, dtype=bool)
    pos, n = int(y.sum()), len(y)
    if pos == 0 or pos == n:
        return None
    r = _ranks(np.asarray(score, dtype=np.float64))
    return float((r[y].sum() - pos * (pos + 1) / 2) / (pos * (n - pos)))


def aupr(y: np.ndarray, score: np.ndarray) -> float | None:
    """Average precision with errors as the positive class (step interpolation, ties grouped)."""

    y = np.asarray(y, dtype=bool)
    pos = int(y.sum())
    if pos == 0:
        return None
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[ss[1:] != ss[:-1], True]  # the last row of every tied group
    tp = np.cumsum(ys)[last]
    seen = (np.flatnonzero(last) + 1).astype(np.float64)
    recall = tp / pos
    precision = tp / seen
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(y: np.ndarray, score: np.ndarray, tpr: float = 0.95) -> float | None:
    """Share of correct samples flagged at the strictest threshold that catches ``tpr`` of the errors."""

    y = np.asarray(y, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    s = np.asarray(score, dtype=np.float64)
    threshold = np.sort(s[y])[::-1][max(0, math.ceil(tpr * pos) - 1)]
    return float((s[~y] >= threshold).sum() / neg)


def ece(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of predicted error probabilities (equal-width bins)."""

    p = np.asarray(proba, dtype=np.float64)
    if len(p) == 0:
        return None
    yy = np.asarray(y, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(yy[m].mean() - p[m].mean())
    return float(total / len(p))


def detector_metrics(y: np.ndarray, score: np.ndarray, confident: np.ndarray | None = None) -> dict:
    """AUROC, AUPR-error and FPR@95%TPR of one detector, plus its AUROC among ``confident`` rows."""
    out = {"auroc": auroc(y, score), "aupr_error": aupr(y, score), "fpr95": fpr_at_tpr(y, score)}
    if confident is not None:
        out["auroc_confident"] = auroc(y[confident], score[confident])
    return out


def auroc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, rounds: int = 200, seed: int = 0) -> dict:
    """AUROC(a) − AUROC(b) on the same samples, with a paired bootstrap 95% interval.

    The samples are resampled ``rounds`` times (stratified: errors and correct predictions
    separately, so every resample has both); the interval is the 2.5–97.5 percentile range.
    """
    y = np.asarray(y, dtype=bool)
    diff = None if auroc(y, a) is None else auroc(y, a) - auroc(y, b)  # type: ignore[operator]
    if diff is None:
        return {"difference": None, "lo": None, "hi": None, "rounds": 0}
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    draws = []
    for _ in range(rounds):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        draws.append(auroc(y[idx], a[idx]) - auroc(y[idx], b[idx]))  # type: ignore[operator]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"difference": float(diff), "lo": float(lo), "hi": float(hi), "rounds": rounds}


# -- binomial bounds -----------------------------------------------------------------------
def binom_cdf(x: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """P(X ≤ x) for X ~ Binomial(n, p), elementwise over integer arrays ``x`` and ``n``."""

    x = np.asarray(x, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    out = np.ones(x.shape, dtype=np.float64)
    live = x < n
    if not live.any() or p <= 0.0:
        return out
    if p >= 1.0:
        return np.where(live, 0.0, 1.0)
    xs, ns = x[live], n[live]
    i = np.arange(int(xs.max()) + 1)
    lg = np.vectorize(math.lgamma)
    log_pmf = (
        lg(ns[:, None] + 1.0)
        - lg(i[None, :] + 1.0)
        - lg(np.maximum(ns[:, None] - i[None, :], 0) + 1.0)
        + i[None, :] * math.log(p)
        + (ns[:, None] - i[None, :]) * math.log1p(-p)
    )
    log_pmf = np.where(i[None, :] <= xs[:, None], log_pmf, -np.inf)
    out[live] = np.exp(log_pmf).sum(axis=1).clip(0.0, 1.0)
    return out


def upper_bound(errors: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on an error rate: the p with P(X ≤ errors) = 1 − level."""

    if n == 0:
        return 1.0
    if errors >= n:
        return 1.0
    lo, hi = errors / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binom_cdf(np.array([errors]), np.array([n]), mid)[0] > 1.0 - level:
            lo = mid
        else:
            hi = mid
    return hi


def wilson(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval of a rate (what the zone tables print)."""
    if n == 0:
        return (0.0, 1.0)
    z = _z(level)
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _z(level: float) -> float:
    """Two-sided standard-normal quantile for ``level`` (bisection on erf; no scipy)."""
    target = 1 - (1 - level) / 2
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
