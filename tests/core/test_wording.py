"""The evaluation's headline: its verdict follows the bootstrap interval, not the point difference."""

from __future__ import annotations

import numpy as np
import pytest

from ml_debugger.core.metrics import auroc, auroc_difference
from ml_debugger.core.wording import headline


def _metrics(y: np.ndarray, ours: np.ndarray, baseline: np.ndarray) -> dict:
    versus = auroc_difference(y, ours, baseline)
    return {
        "detectors": {"error_proba": {"auroc": auroc(y, ours)}},
        "best_baseline": {"name": "trust_score", "auroc": auroc(y, baseline), "versus": versus},
    }


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 samples, 60 errors; a strong score, and a weak one (the strong one plus much noise)."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60, dtype=bool), np.zeros(240, dtype=bool)]
    strong = y + rng.normal(0, 0.6, len(y))
    return y, strong, strong + rng.normal(0, 2.0, len(y))


def test_a_clear_gain_beats_and_a_clear_loss_falls_short(scores: tuple[np.ndarray, ...]) -> None:
    y, strong, weak = scores
    win = headline(_metrics(y, strong, weak))
    assert " beats the best baseline, kNN Trust Score (" in win and "difference +0." in win
    loss = headline(_metrics(y, weak, strong))
    assert " falls short of the best baseline" in loss and "difference -0." in loss


def test_a_gap_inside_the_interval_is_level_whatever_its_sign(scores: tuple[np.ndarray, ...]) -> None:
    y, strong, _ = scores
    rng = np.random.default_rng(1)
    twin = strong + rng.normal(0, 0.05, len(y))  # the same detector up to a little noise
    metrics = _metrics(y, twin, strong)
    versus = metrics["best_baseline"]["versus"]
    assert versus["lo"] < 0 < versus["hi"]
    line = headline(metrics)
    assert " is level with the best baseline" in line and "95% bootstrap interval" in line
    assert "beats" not in line and "falls short" not in line


def test_without_an_interval_the_point_difference_decides() -> None:
    metrics = {"detectors": {"error_proba": {"auroc": 0.9}}, "best_baseline": {"name": "msp", "auroc": 0.8}}
    assert "0.9000 beats the best baseline, max softmax (MSP) (0.8000): difference +0.1000" in headline(metrics)
    metrics["detectors"]["error_proba"]["auroc"] = 0.7
    assert "does not beat" in headline(metrics)
