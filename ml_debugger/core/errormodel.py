"""The error model: predicts whether the model's prediction for a sample is wrong.

Method ``classification_v1``
----------------------------
* **Signals** (columns of one Polars frame): softmax statistics (confidence as a logit,
  margin, entropy, DOCTOR's 1−Σp², energy), stability signals when the runs were extracted
  with ``--stability`` (feature stability, flip rate, perturbed confidence), and kNN
  signals against the labelled reference bank (share of neighbours disagreeing with the
  prediction, log Trust Score, log class-mean distance ratio, k-th-neighbour distance); see
  ``neighbors.py``.
* **Model**: L2-regularised logistic regression on standardised signals, fitted by L-BFGS
  in float64. Cross-fitting (stratified folds) gives every labelled sample an out-of-fold
  score; the model is then refitted on all labelled samples to score other runs.
* **Calibration**: Platt scaling — a one-dimensional logistic fit of the out-of-fold logits
  to the errors — applied on top of the logistic model's logit.
* **Fallbacks** when there is too little to learn from (counts in ``configs/default.yaml``):
  ``confidence_only`` (the same procedure on the confidence logit alone) and, with fewer
  than two errors or two correct samples, ``one_minus_confidence`` (no fit at all).

Parameters are plain lists of floats in a JSON document (``ErrorModel.to_dict``) with a
``format`` number; ``from_dict`` refuses a format it does not know, clearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

from ml_debugger.errors import StoreError

METHOD = "classification_v1"
# Version of the stored parameter document; bump when its shape changes and keep reading old ones.
FORMAT = 1
# Logit transforms clip probabilities this far from 0 and 1.
_CLIP = 1e-6

SOFTMAX_SIGNALS = ("confidence_logit", "margin", "entropy", "doctor", "energy")
STABILITY_SIGNALS = ("stability", "flip_rate", "perturbed_confidence")
KNN_SIGNALS = ("knn_disagree", "log_trust", "log_class_ratio", "knn_distance")


def doctor_expr() -> pl.Expr:
    """DOCTOR's 1 − Σp² from a row's probability list."""
    return (1 - pl.col("probs").list.eval(pl.element().pow(2)).list.sum()).alias("doctor")


def signal_frame(outputs: pl.DataFrame, knn: dict[str, Any]) -> pl.DataFrame:
    """Every signal the error model and the baselines use, one row per sample of ``outputs``.

    ``outputs`` are a run's outputs (``Store.read_outputs``); ``knn`` the arrays of
    ``neighbors.knn_signals`` in the same row order.
    """
    c = pl.col("confidence").clip(_CLIP, 1 - _CLIP)
    frame = outputs.with_columns(pl.Series(k, v) for k, v in knn.items())
    derived = [
        (c / (1 - c)).log().alias("confidence_logit"),
        doctor_expr(),
    ]
    for source, name in (("trust_score", "log_trust"), ("class_ratio", "log_class_ratio")):
        if source in frame.columns:
            derived.append(pl.col(source).clip(_CLIP, None).log().alias(name))
    return frame.with_columns(derived)


def signal_arrays(outputs: dict[str, np.ndarray], knn: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``signal_frame`` for NumPy arrays (the real-time path): the same derived signals, computed
    in the same float32 precision, so both paths give the same error_proba."""
    out = {**outputs, **knn}
    c = np.clip(np.asarray(outputs["confidence"], dtype=np.float32), np.float32(_CLIP), np.float32(1 - _CLIP))
    out["confidence_logit"] = np.log(c / (np.float32(1) - c))
    probs = np.asarray(outputs["probs"], dtype=np.float32)
    out["doctor"] = np.float32(1) - np.einsum("ij,ij->i", probs, probs)
    for source, name in (("trust_score", "log_trust"), ("class_ratio", "log_class_ratio")):
        if source in knn:
            out[name] = np.log(np.maximum(np.asarray(knn[source], dtype=np.float32), np.float32(_CLIP)))
    return out


def signal_names(*, stability: bool) -> list[str]:
    return [*SOFTMAX_SIGNALS, *(STABILITY_SIGNALS if stability else ()), *KNN_SIGNALS]


def _matrix(frame: pl.DataFrame, names: list[str]) -> np.ndarray:

    return (
        frame.select(pl.col(n).cast(pl.Float64).fill_null(0.0).fill_nan(0.0) for n in names)
        .to_numpy()
        .astype(np.float64)
    )


@dataclass(frozen=True)
class ErrorModel:
    """A fitted error model: ``error_proba = σ(a · (w · (x − μ) / σ + b) + c)``."""

    kind: str  # "logistic" | "confidence_only" | "one_minus_confidence"
    signals: list[str]
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    platt: tuple[float, float] = (1.0, 0.0)

    def logit(self, frame: pl.DataFrame) -> np.ndarray:
        return self.logit_of(_matrix(frame, self.signals))

    @cached_property
    def _linear(self) -> tuple[np.ndarray, float]:
        """The standardisation folded into the weights, built once (the real-time filter
        predicts per batch): ``w · (x − μ) / σ + b = x · (w / σ) + (b − Σ w μ / σ)``."""
        w = np.asarray(self.coef, dtype=np.float64) / np.asarray(self.scale, dtype=np.float64)
        return w, float(self.intercept - w @ np.asarray(self.mean, dtype=np.float64))

    def logit_of(self, x: np.ndarray) -> np.ndarray:
        """The uncalibrated logit of a design matrix ``[n, len(signals)]``."""
        w, b = self._linear
        return np.asarray(x @ w + b)

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Calibrated error probability of every row of a ``signal_frame``."""
        import numpy as np

        if self.kind == "one_minus_confidence":
            return np.clip(1.0 - frame["confidence"].cast(pl.Float64).to_numpy(), 0.0, 1.0)
        a, b = self.platt
        return _sigmoid(a * self.logit(frame) + b)

    def predict_arrays(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """``predict`` for the arrays of ``signal_arrays`` (NaN counts as 0, as nulls do)."""
        if self.kind == "one_minus_confidence":
            return np.clip(1.0 - signals["confidence"].astype(np.float64), 0.0, 1.0)
        x = np.stack([signals[s] for s in self.signals], axis=1, dtype=np.float64)
        x[np.isnan(x)] = 0.0
        a, b = self.platt
        return _sigmoid(a * self.logit_of(x) + b)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": METHOD,
            "kind": self.kind,
            "signals": self.signals,
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "platt": list(self.platt),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ErrorModel:
        fmt = doc.get("format")
        if fmt != FORMAT:
            raise StoreError(
                f"this result's error model has format {fmt!r}, but this mldbg reads format {FORMAT}; "
                "re-run `mldbg evaluate` to refit it, or use the mldbg version that wrote it"
            )
        return cls(
            kind=doc["kind"],
            signals=list(doc["signals"]),
            mean=list(doc["mean"]),
            scale=list(doc["scale"]),
            coef=list(doc["coef"]),
            intercept=float(doc["intercept"]),
            platt=(float(doc["platt"][0]), float(doc["platt"][1])),
        )


@dataclass(frozen=True)
class Fit:
    """What ``fit_error_model`` returns: the refitted model, out-of-fold probabilities, notes."""

    model: ErrorModel
    oof_proba: np.ndarray
    notes: list[str]


def fit_error_model(
    frame: pl.DataFrame,
    is_error: np.ndarray,
    *,
    stability: bool,
    folds: int = 5,
    l2: float = 1.0,
    seed: int = 0,
    min_errors: int = 10,
) -> Fit:
    """Fit the error model on a labelled run's ``signal_frame`` with cross-fitting.

    Parameters
    ----------
    frame
        One row per labelled sample, the columns of ``signal_frame``.
    is_error
        ``[n]`` booleans: prediction ≠ label.
    stability
        Use the stability signals (the runs were extracted with ``--stability``).
    folds
        Cross-fitting folds (stratified on ``is_error``).
    l2
        Ridge penalty on the standardised coefficients (as scikit-learn's ``1 / C``).
    min_errors
        Fewest errors (and correct samples) for the full model; below it, ``confidence_only``.

    Returns
    -------
    Fit
        ``oof_proba[i]`` comes from a model that never saw sample i.
    """

    y = np.asarray(is_error, dtype=np.float64)
    n_err, n_ok = int(y.sum()), int(len(y) - y.sum())
    notes: list[str] = []
    if min(n_err, n_ok) < 2:
        notes.append(
            f"only {n_err} error(s) and {n_ok} correct sample(s): nothing to fit, so error_proba = 1 − confidence "
            f"(uncalibrated); label at least {min_errors} of each for the full model"
        )
        model = ErrorModel("one_minus_confidence", ["confidence"])
        return Fit(model, model.predict(frame), notes)
    names = signal_names(stability=stability)
    kind = "logistic"
    if min(n_err, n_ok) < min_errors:
        names, kind = ["confidence_logit"], "confidence_only"
        notes.append(
            f"only {n_err} error(s) and {n_ok} correct sample(s) (the full model needs {min_errors} of each): "
            "fitted on confidence alone"
        )
    k = max(2, min(folds, n_err, n_ok))
    model, oof = cross_fit(_matrix(frame, names), y, names, _stratified_folds(y, k, seed), l2=l2, kind=kind)
    return Fit(model, oof, notes)


def cross_fit(
    x: np.ndarray, y: np.ndarray, names: list[str], fold: np.ndarray, *, l2: float, kind: str = "logistic"
) -> tuple[ErrorModel, np.ndarray]:
    """L2 logistic regression of ``y`` on the design matrix ``x`` (columns ``names``): out-of-fold
    logits per ``fold`` id, Platt scaling fitted on them, and the model refitted on all rows.
    Returns the calibrated model and the out-of-fold probabilities."""
    oof_logit = np.empty(len(y))
    for f in np.unique(fold):
        test = fold == f
        m = _fit_logistic(x[~test], y[~test], l2)
        oof_logit[test] = m.logit_of(x[test])
    platt = _fit_platt(oof_logit, y)
    full = _fit_logistic(x, y, l2)
    model = ErrorModel(
        kind=kind,
        signals=names,
        mean=full.mean.tolist(),
        scale=full.scale.tolist(),
        coef=full.coef.tolist(),
        intercept=float(full.intercept),
        platt=platt,
    )
    return model, _sigmoid(platt[0] * oof_logit + platt[1])


@dataclass(frozen=True)
class _Logistic:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def logit_of(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(((x - self.mean) / self.scale) @ self.coef + self.intercept)


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> _Logistic:

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    coef, intercept = _lbfgs((x - mean) / scale, y, l2)
    return _Logistic(mean, scale, coef, intercept)


def _fit_platt(logit: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: ``σ(a · logit + b)`` fitted by maximum likelihood (a tiny ridge keeps it finite)."""

    coef, intercept = _lbfgs(logit[:, None], y, 1e-3)
    a = float(coef[0])
    if not np.isfinite(a) or a <= 0:  # a flat or inverted fit is no calibration; keep the raw logit
        return (1.0, 0.0)
    return (a, float(intercept))


def _lbfgs(z: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Minimise Σ log-loss + l2/2 · |w|² (intercept unpenalised) in float64."""
    import torch

    zt = torch.as_tensor(z, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    w = torch.zeros(zt.shape[1], dtype=torch.float64, requires_grad=True)
    prior = float(yt.mean().clamp(1e-6, 1 - 1e-6))
    b = torch.tensor(math.log(prior / (1 - prior)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(zt @ w + b, yt, reduction="sum")
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().copy(), float(b.detach())


def _stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:

    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for value in (0.0, 1.0):
        idx = np.flatnonzero(y == value)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = np.arange(len(idx)) % k
    return fold


def _sigmoid(z: np.ndarray) -> np.ndarray:

    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))
