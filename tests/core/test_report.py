"""The report's reductions (heatmap grids, reliability, confusion) against direct computations on
the real scored digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ml_debugger.core.report import aggregates as agg
from ml_debugger.core.report.data import load
from ml_debugger.core.store import Store


@pytest.fixture(scope="module")
def val(scored: Path) -> pl.DataFrame:
    with Store(scored, read_only=True) as store:
        return load(store).frame


def test_axis_bins_are_closed_on_the_left_and_clip_at_the_ends() -> None:
    ax = agg.Axis("confidence", "confidence", (0.0, 0.5, 0.9, 1.0))
    got = ax.index(np.array([0.0, 0.2, 0.5, 0.89, 0.9, 1.0, 1.5, -0.1]))
    assert got.tolist() == [0, 0, 1, 1, 2, 2, 2, 0]
    assert ax.ticks == ["0–0.5", "0.5–0.9", "0.9–1"]


def test_grids_count_every_sample_once_and_match_a_direct_group_by(val: pl.DataFrame, scored: Path) -> None:
    with Store(scored, read_only=True) as store:
        classes = store.require_run("val").classes
    kind = agg.HEATMAPS["confidence-stability"]
    grids = agg.grids(val, kind, val, classes)
    assert grids is not None
    overall = grids[None]
    assert overall.count.sum() == val.height
    assert overall.errors is not None and overall.errors.sum() == val["is_error"].sum()
    # Per predicted class grids partition the overall one.
    assert sum(g.count for k, g in grids.items() if k is not None).tolist() == overall.count.tolist()  # type: ignore[union-attr]
    # One cell checked directly: the most confident bin of the most stable rows.
    ax, ay = overall.x, overall.y
    cell = val.filter(
        (pl.col("confidence") >= ax.edges[-2]) & (pl.col("stability") >= ay.edges[-2]) & (pl.col("stability") <= 1)
    )
    assert overall.count[-1, -1] == cell.height
    assert overall.errors[-1, -1] == cell["is_error"].sum()
    rate = overall.rate[-1, -1]
    assert (np.isnan(rate) and cell.height == 0) or rate == pytest.approx(cell["is_error"].mean())
    # Stability rows are quantiles of the labelled run: the lowest row holds about its least stable 5%.
    assert overall.count[0].sum() == pytest.approx(0.05 * val.height, abs=3)
    assert 0.05 <= overall.zmax <= 1.0


def test_unlabelled_grids_show_the_mean_error_proba(val: pl.DataFrame) -> None:
    unlabelled = val.with_columns(is_error=pl.lit(None, dtype=pl.Boolean), label=pl.lit(None, dtype=pl.Int32))
    grids = agg.grids(unlabelled, agg.HEATMAPS["error_proba-ood"], val, [str(i) for i in range(10)])
    assert grids is not None
    g = grids[None]
    assert not g.labelled and g.errors is None
    assert np.nansum(g.rate * g.count) == pytest.approx(val["error_proba"].sum(), rel=1e-6)


def test_no_stability_means_no_stability_heatmap(val: pl.DataFrame) -> None:
    frame = val.with_columns(stability=pl.lit(None, dtype=pl.Float32))
    assert agg.grids(frame, agg.HEATMAPS["confidence-stability"], frame, [str(i) for i in range(10)]) is None


def test_reliability_bins_partition_the_labelled_rows(val: pl.DataFrame) -> None:
    bins = agg.reliability(val)
    assert sum(b["n"] for b in bins) == val.height
    assert sum(b["errors"] for b in bins) == val["is_error"].sum()
    means = [b["mean_proba"] for b in bins]
    assert means == sorted(means)
    assert all(b["lo"] <= b["observed"] <= b["hi"] for b in bins)


def test_confusion_matrix_and_the_classes_it_keeps(val: pl.DataFrame) -> None:
    m = agg.confusion(val, 10)
    assert m is not None and m.sum() == val.height
    assert np.trace(m) == val.height - val["is_error"].sum()
    keep = agg.top_confused(m, 3)
    off = m - np.diag(np.diag(m))
    involvement = off.sum(0) + off.sum(1)
    assert len(keep) == 3 and set(involvement[keep]) == set(sorted(involvement)[-3:])


def test_zone_quantiles_are_ordered(val: pl.DataFrame) -> None:
    stats = agg.zone_quantiles(val)
    assert sum(s["n"] for s in stats) == val.height
    for s in stats:
        assert s["p01"] <= s["q1"] <= s["median"] <= s["q3"] <= s["p99"]
