"""The error model: out-of-fold honesty, probabilities in [0, 1], fallbacks, stored parameters."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from ml_debugger.core.errormodel import ErrorModel, fit_error_model, signal_names
from ml_debugger.core.metrics import auroc
from ml_debugger.errors import StoreError


def _signals(n: int, seed: int, informative: bool) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    err = rng.random(n) < 0.2
    cols = {name: rng.normal(size=n) for name in signal_names(stability=True)}
    if informative:
        cols["log_trust"] = cols["log_trust"] - 1.5 * err
    cols["confidence"] = rng.random(n)
    return pl.DataFrame(cols), err


def test_out_of_fold_scores_do_not_see_their_own_label() -> None:
    # Pure noise: a model scoring its own training rows finds patterns; out-of-fold it cannot.
    frame, err = _signals(300, 0, informative=False)
    fit = fit_error_model(frame, err, stability=True, l2=1e-3)
    in_sample = fit.model.predict(frame)
    assert auroc(err, in_sample) > 0.6
    assert abs(auroc(err, fit.oof_proba) - 0.5) < 0.1


def test_informative_signals_are_learned_and_probabilities_calibrated() -> None:
    frame, err = _signals(2000, 1, informative=True)
    fit = fit_error_model(frame, err, stability=True)
    assert fit.model.kind == "logistic" and not fit.notes
    p = fit.oof_proba
    assert ((p >= 0) & (p <= 1)).all()
    assert auroc(err, p) > 0.8
    assert abs(p.mean() - err.mean()) < 0.02  # Platt scaling on out-of-fold logits
    coef = dict(zip(fit.model.signals, fit.model.coef, strict=True))
    assert coef["log_trust"] < 0 and abs(coef["log_trust"]) == max(abs(c) for c in coef.values())


def test_too_few_errors_fall_back_and_say_so() -> None:
    frame, _ = _signals(200, 2, informative=False)
    few = np.zeros(200, dtype=bool)
    few[:4] = True
    fit = fit_error_model(frame, few, stability=True, min_errors=10)
    assert fit.model.kind == "confidence_only" and "needs 10 of each" in fit.notes[0]
    none = fit_error_model(frame, np.zeros(200, dtype=bool), stability=True)
    assert none.model.kind == "one_minus_confidence" and "nothing to fit" in none.notes[0]
    assert np.allclose(none.oof_proba, 1 - frame["confidence"].to_numpy())


def test_parameters_round_trip_through_json_and_unknown_formats_are_refused() -> None:
    frame, err = _signals(500, 3, informative=True)
    model = fit_error_model(frame, err, stability=False).model
    doc = json.loads(json.dumps(model.to_dict()))
    again = ErrorModel.from_dict(doc)
    assert np.array_equal(again.predict(frame), model.predict(frame))
    with pytest.raises(StoreError, match="format 99.*re-run `mldbg evaluate`"):
        ErrorModel.from_dict({**doc, "format": 99})
