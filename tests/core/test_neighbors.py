"""kNN signals against brute force in NumPy: distances, votes, Trust Score, OOD percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from ml_debugger.core import neighbors as N


def _data(n: int = 300, d: int = 12, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :c] += 2.5 * np.eye(c)[y]
    return x, y


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sqrt(np.clip(2 - 2 * a @ b.T, 0, None))


def test_leave_one_out_signals_match_brute_force(monkeypatch) -> None:
    monkeypatch.setattr(N, "_BLOCK_FLOATS", 300 * 7)  # several chunks, to test the chunking
    x, y = _data()
    k = 5
    bank, raw = N.build_bank(x, y, 4, k=k)
    pred = (y + (np.arange(len(y)) % 7 == 0)) % 4  # some wrong predictions
    sig = N.signals_from_search(raw, pred, bank)
    d = _dist(x, x)
    np.fill_diagonal(d, np.inf)  # leave one out
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    assert np.allclose(sig["knn_distance"], np.sort(d, axis=1)[:, k - 1], atol=1e-5)
    assert np.allclose(sig["knn_disagree"], (y[order] != pred[:, None]).mean(1))
    d_pred = np.array([d[i, y == pred[i]].min() for i in range(len(y))])
    d_other = np.array([d[i, y != pred[i]].min() for i in range(len(y))])
    assert np.allclose(sig["trust_score"], (d_other + 1e-6) / (d_pred + 1e-6), rtol=1e-4)
    majority = np.array([np.bincount(y[o], minlength=4).max() for o in order])
    voted = np.array([np.bincount(y[o], minlength=4)[v] for o, v in zip(order, sig["knn_vote"], strict=True)])
    assert (voted == majority).all()
    # the bank's own OOD scores are its percentiles: spread evenly over [0, 1]
    assert 0 <= sig["ood_score"].min() < 0.01 and 0.99 < sig["ood_score"].max() <= 1
    assert abs(float(np.mean(sig["ood_score"])) - 0.5) < 0.01


@pytest.mark.parametrize("unequal", [False, True])
def test_class_ratio_matches_brute_force(unequal: bool) -> None:
    # Balanced classes go through one padded top-k ([queries, classes, widest class]); very
    # unequal ones (padding would more than double the bank) through a loop over classes.
    # Both: a class of 2 samples (fewer than CLASS_K) and an empty class.
    c = 6
    x, y = _data(n=4000 if unequal else 400, c=c, seed=1)
    y = np.where(y == 5, 4, y)  # class 5 empty
    y[:2], y[2:][y[2:] == 3] = 3, 2  # class 3: two samples
    if unequal:
        y[10:][y[10:] != 3] = 0  # nearly everything in class 0
    bank, _ = N.build_bank(x, y, c, k=5)
    assert (bank.class_slots is None) == unequal
    queries, pred = x[:60] + 0.05, (y[:60] + np.arange(60)) % c
    sig = N.knn_signals(queries, pred, bank)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = q @ b.T
    mean_k = np.array([[np.sort(row[y == k])[::-1][: N.CLASS_K].mean() if (y == k).any() else -2.0 for k in range(c)]
                       for row in sims])  # fmt: skip
    dist = np.sqrt(np.clip(2 - 2 * np.clip(mean_k, -1, 1), 0, None))
    d_pred = dist[np.arange(60), pred]
    d_other = np.where(np.eye(c, dtype=bool)[pred], np.inf, dist).min(1)
    assert np.allclose(sig["class_ratio"], (d_other + 1e-6) / (d_pred + 1e-6), rtol=1e-4)


@pytest.mark.parametrize(("m", "k"), [(1, 5), (7, 3), (200, 10)])
def test_small_batch_search_matches_the_chunked_search(m: int, k: int) -> None:
    # Real-time batches go through a NumPy search of the padded bank; larger query sets through
    # torch. Same bank (a class of 2 samples, fewer than k and CLASS_K; an empty class), same
    # queries: the same neighbours and the same signals to float rounding.
    c = 6
    x, y = _data(n=500, c=c, seed=4)
    y = np.where(y == 5, 4, y)
    y[:2], y[2:][y[2:] == 3] = 3, 2
    bank, _ = N.build_bank(x, y, c, k=k)
    assert bank.padded is not None
    rng = np.random.default_rng(5)
    queries = (x[rng.integers(0, len(x), m)] + rng.normal(scale=0.3, size=(m, x.shape[1]))).astype(np.float32)
    small = N._search_small(N._unit(queries), bank)
    big = N._search(N.normalize(queries), bank, exclude_self=False)
    assert np.array_equal(np.sort(small["neighbor_labels"], 1), np.sort(big["neighbor_labels"].numpy(), 1))
    for key in ("knn_distance", "class_distance", "class_distance_k"):
        assert np.allclose(small[key], big[key].numpy(), atol=1e-5), key
    pred = rng.integers(0, c, m)
    a, b = N.signals_from_search(small, pred, bank), N.signals_from_search(big, pred, bank)
    assert a.keys() == b.keys()
    for key in a:
        assert np.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key


def test_live_search_falls_back_to_the_chunked_search(monkeypatch) -> None:
    # A padded copy past the size cap, or a live batch past SMALL_QUERIES, takes the torch search.
    x, y = _data(n=300, c=4, seed=6)
    pred = y[:20]
    reference = N.knn_signals(x[:20] + 0.1, pred, N.build_bank(x, y, 4, k=5)[0])
    monkeypatch.setattr(N, "_PADDED_MAX_FLOATS", 10)
    capped, _ = N.build_bank(x, y, 4, k=5)
    assert capped.padded is None
    live = N.knn_signals(x[:20] + 0.1, pred, capped, live=True)
    for key in reference:
        assert np.array_equal(live[key], reference[key]), key
    monkeypatch.setattr(N, "SMALL_QUERIES", 5)
    called = []
    monkeypatch.setattr(N, "_search_small", lambda *a: called.append(a))
    N.knn_signals(x[:20] + 0.1, pred, N.build_bank(x, y, 4, k=5)[0], live=True)
    assert not called


def test_vote_breaks_ties_towards_the_nearer_neighbour() -> None:
    labels = np.array([[2, 0, 0, 2], [1, 3, 3, 1], [4, 4, 4, 4], [0, 1, 2, 1]])
    assert N._vote(labels).tolist() == [2, 1, 4, 1]


def test_queries_far_from_the_bank_get_high_ood_scores() -> None:
    x, y = _data()
    bank, _ = N.build_bank(x, y, 4, k=5)
    near = N.knn_signals(x[:50] + 0.01, y[:50], bank)
    far_away = -np.abs(x[:50]) - 3.0  # the opposite side of the sphere from every cluster
    far = N.knn_signals(far_away, y[:50], bank)
    assert np.median(near["ood_score"]) < 0.6
    assert (far["ood_score"] > 0.99).all()
    assert (near["ood_score"] >= 0).all() and (far["ood_score"] <= 1).all()


def test_inverted_file_search_stays_close_to_exact() -> None:
    rng = np.random.default_rng(3)
    c, d, n = 6, 32, 4000
    centres = rng.normal(size=(c, d)) * 0.35
    y = rng.integers(0, c, n)
    x = (centres[y] + rng.normal(size=(n, d)) * 0.25).astype(np.float32)
    bank, _ = N.build_bank(x[:3000], y[:3000], c, k=10)
    pred = np.where(rng.random(1000) < 0.15, (y[3000:] + 1) % c, y[3000:])
    exact = N.knn_signals(x[3000:], pred, bank)
    approx = N.knn_signals(x[3000:], pred, N.with_ivf(bank, probes=8, lists=40))
    assert (approx["knn_vote"] == exact["knn_vote"]).mean() > 0.98
    assert np.abs(approx["knn_disagree"] - exact["knn_disagree"]).mean() < 0.02
    # the OOD reference is re-measured with the same search, so percentiles stay calibrated
    assert abs(float(np.mean(approx["ood_score"])) - float(np.mean(exact["ood_score"]))) < 0.05
    err = pred != y[3000:]
    from ml_debugger.core.metrics import auroc

    for key in ("trust_score", "class_ratio"):
        assert abs(auroc(err, -approx[key]) - auroc(err, -exact[key])) < 0.01, key
