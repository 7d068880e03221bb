"""Invariants of the per-sample signals and perturbations (property tests, fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_debugger.core.signals import softmax_arrays, softmax_signals, stability_signals
from ml_debugger.core.stability import StabilityConfig, perturb


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 8), c=st.integers(1, 12), scale=st.floats(0.01, 50), seed=st.integers(0, 2**16))
def test_softmax_signals_ranges(b: int, c: int, scale: float, seed: int) -> None:
    logits = torch.randn(b, c, generator=torch.Generator().manual_seed(seed)) * scale
    s = softmax_signals(logits)
    assert torch.allclose(s["probs"].sum(1), torch.ones(b), atol=1e-5)
    assert ((s["confidence"] >= 1.0 / c - 1e-6) & (s["confidence"] <= 1 + 1e-6)).all()
    assert ((s["margin"] >= 0) & (s["margin"] <= 1 + 1e-6)).all()
    assert ((s["entropy"] >= 0) & (s["entropy"] <= math.log(c) + 1e-4)).all()
    assert torch.equal(s["pred"], logits.argmax(1))
    assert torch.allclose(s["energy"], -torch.logsumexp(logits, 1))


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 8), c=st.integers(1, 12), scale=st.floats(0.01, 50), seed=st.integers(0, 2**16))
def test_softmax_arrays_equal_softmax_signals(b: int, c: int, scale: float, seed: int) -> None:
    # The real-time filter's NumPy signals must match what extract stores (torch).
    logits = torch.randn(b, c, generator=torch.Generator().manual_seed(seed)) * scale
    want = softmax_signals(logits)
    got = softmax_arrays(logits.numpy())
    assert got.keys() == want.keys()
    assert np.array_equal(got["pred"], want["pred"].numpy())
    for key in ("probs", "confidence", "margin", "entropy", "energy"):
        assert got[key].dtype == np.float32, key
        assert np.allclose(got[key], want[key].numpy(), rtol=1e-5, atol=1e-6), key


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 6), k=st.integers(1, 5), c=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_stability_signals_ranges(b: int, k: int, c: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    feats, pfeats = torch.randn(b, 7, generator=g), torch.randn(b * k, 7, generator=g)
    pred, plogits = torch.randint(0, c, (b,), generator=g), torch.randn(b * k, c, generator=g)
    s = stability_signals(feats, pred, plogits, pfeats, k)
    for key in ("stability", "flip_rate", "perturbed_confidence"):
        assert ((s[key] >= 0) & (s[key] <= 1)).all(), key
    ppred = plogits.argmax(1).view(b, k)
    for i in range(b):
        went = {int(p) for p in ppred[i] if p != pred[i]}
        assert set(torch.nonzero(s["flip_mask"][i]).flatten().tolist()) == went
        assert abs(float(s["flip_rate"][i]) - len([p for p in ppred[i] if p != pred[i]]) / k) < 1e-6


def test_unmoved_features_are_fully_stable() -> None:
    feats = torch.rand(3, 5) + 0.1
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    s = stability_signals(feats, logits.argmax(1), logits.repeat_interleave(4, 0), feats.repeat_interleave(4, 0), 4)
    assert torch.allclose(s["stability"], torch.ones(3)) and float(s["flip_rate"].sum()) == 0.0
    assert not s["flip_mask"].any()


def test_perturbations_depend_only_on_the_sample() -> None:
    cfg = StabilityConfig(k=3, seed=5)
    coarse = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.nn.functional.interpolate(coarse, size=(12, 12), mode="bilinear")  # smooth, like real images
    ids = ["a", "b", "c", "d"]
    full = perturb(x, ids, cfg)
    assert full.shape == (12, 1, 12, 12)
    part = perturb(x[[2, 0]], ["c", "a"], cfg)  # another batch composition and order
    assert torch.equal(part[:3], full[6:9]) and torch.equal(part[3:], full[:3])
    assert not torch.equal(perturb(x, ids, StabilityConfig(k=3, seed=6)), full)
    diff = (full - x.repeat_interleave(3, 0)).abs().mean()
    assert 0 < diff < 0.5 * float(x.std())  # small perturbations (a 1 px shift of a 12 px image)
    assert not torch.equal(full[0], full[1])  # the copies of one sample differ
