"""BBoxStrategy against a direct per-image computation, and its validation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ml_debugger.core.detection.strategy import BBoxStrategy
from ml_debugger.errors import UsageError


def _boxes(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = 400
    return pl.DataFrame(
        {
            "sample_id": [f"img{i:02d}" for i in rng.integers(0, 40, n)],
            "error_proba": rng.random(n),
            "det_error_proba": rng.random(n),
            "cls_error_proba": rng.random(n),
            "score": rng.random(n),
            "pred_size": rng.random(n) * 0.2,
            "zone": rng.choice(["hotspot", "critical_hotspot", "operational_coverage"], n),
            "predicted": rng.choice(["cat", "dog"], n),
        }
    )


def _direct(boxes: pl.DataFrame, s: BBoxStrategy) -> dict[str, float]:
    out = {}
    for (sid,), part in boxes.group_by("sample_id"):
        rows = [r for r in part.to_dicts() if (not s.zones or r["zone"] in s.zones)]
        rows = [r for r in rows if all(c.expr() is not None and _ok(r, c) for c in s.conditions)]
        rows.sort(key=lambda r: r[s.target_column], reverse=s.sort == "desc")
        rows = rows[: s.top_n] if s.top_n else rows
        if not rows:
            out[sid] = 0.0
            continue
        v = np.array([r[s.target_column] for r in rows])
        w = np.array([r[s.weight_column] for r in rows]) if s.weight_column else np.ones(len(rows))
        if s.aggregation == "max":
            out[sid] = float(v.max())
        elif s.aggregation == "mean":
            out[sid] = float((v * w).sum() / w.sum())
        else:
            order = np.argsort(v, kind="stable")
            cw = np.cumsum(w[order])
            out[sid] = float(v[order][np.argmax(cw >= w.sum() / 2)])
    return out


def _ok(row: dict, c: object) -> bool:
    from ml_debugger.core.conditions import OPS

    return bool(OPS[c.op](row[c.column], c.value))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"aggregation": "max", "top_n": 3},
        {"aggregation": "median", "weight_column": "pred_size"},
        {"aggregation": "mean", "weight_column": "pred_size", "target_column": "det_error_proba", "top_n": 2},
        {"bbox_filter": "error_proba>=0.3", "aggregation": "median", "sort": "asc", "top_n": 4},
        {"bbox_filter": {"target_zones": ["hotspot", "critical_hotspot"], "conditions": ["score>=0.2"]},
         "img_error_threshold": 0.5},
    ],
)  # fmt: skip
def test_image_scores_equal_a_direct_computation(spec: dict) -> None:
    boxes = _boxes()
    s = BBoxStrategy.from_value(spec)
    every = pl.Series([f"img{i:02d}" for i in range(45)])  # 5 images without boxes
    got = s.image_scores(boxes, every)
    assert got.height == 45
    want = _direct(boxes, s)
    for r in got.to_dicts():
        assert r["img_score"] == pytest.approx(want.get(r["sample_id"], 0.0))
        if s.img_error_threshold is None:
            assert r["flag"] is None
        else:
            assert r["flag"] == (r["n_boxes"] > 0 and r["img_score"] >= s.img_error_threshold)
    assert got.filter(pl.col("sample_id") >= "img40")["n_boxes"].sum() == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"aggregation": "mode"}, "aggregation 'mode' is not one of"),
        ({"target_column": "errr_proba"}, "did you mean 'error_proba'"),
        ({"weight_column": "size"}, "unknown weight_column 'size'"),
        ({"bbox_filter": "confidence>=0.5"}, "unknown column 'confidence'"),
        ({"img_error_threshold": 2}, "must be in [0, 1]"),
        ({"top_n": 0}, "top_n 0 must be at least 1"),
        ({"aggregate": "mean"}, "unknown bbox strategy key(s) aggregate"),
    ],
)
def test_bad_strategies_are_named(spec: dict, message: str) -> None:
    with pytest.raises(UsageError) as e:
        BBoxStrategy.from_value(spec)
    assert message in str(e.value)
