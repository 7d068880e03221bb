"""ObjectDetectionDataFilter on the tiny detector: the same box scores as `mldbg score`, flags
from BBoxStrategy, the model's output untouched, and bad settings named at construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from ml_debugger.core.detection.demo import DetectionDemo, to_tensor
from ml_debugger.core.detection.evaluate import evaluate_detection
from ml_debugger.core.detection.extract import DetectionRequest, extract_detections
from ml_debugger.core.scoring import score
from ml_debugger.core.store import Store
from ml_debugger.data_filter import BBoxStrategy, ObjectDetectionDataFilter
from ml_debugger.errors import UsageError


@pytest.fixture(scope="module")
def det_scored(det_demo: DetectionDemo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("detf") / "m.duckdb"
    common = dict(model=str(det_demo.model), model_name="tinydet", workers=0, mean=(0.5,) * 3, std=(0.5,) * 3)
    extract_detections(
        DetectionRequest(
            dataset=str(det_demo.val), name="det_val", annotations=str(det_demo.val_annotations), **common
        ),
        db=db,
    )  # type: ignore[arg-type]
    extract_detections(
        DetectionRequest(dataset=str(det_demo.pool), name="det_pool", classes_file=str(det_demo.classes), **common),
        db=db,
    )  # type: ignore[arg-type]
    evaluate_detection("det_val", db=db)
    score("det_pool", db=db)
    return db


def _batch(det_demo: DetectionDemo, n: int = 12) -> tuple[torch.Tensor, list[str]]:
    paths = sorted(det_demo.pool.glob("*.png"))[:n]
    x = to_tensor(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
    return x, [p.name for p in paths]


def test_real_time_scores_equal_the_stored_ones(det_demo: DetectionDemo, det_scored: Path) -> None:
    model = torch.export.load(str(det_demo.model)).module()
    f = ObjectDetectionDataFilter(model, model_name="tinydet", version_name="v1", db=det_scored, n_class=3,
                                  filter_config={"img_error_threshold": 0.6, "aggregation": "max",
                                                 "bbox_filter": "score>=0.3"})  # fmt: skip
    x, ids = _batch(det_demo)
    out, flags = f(x, input_ids=ids)
    with torch.no_grad():
        direct = model(x)
    assert torch.equal(out["boxes"], direct["boxes"])  # the model's own output, untouched
    with Store(det_scored, read_only=True) as store:
        stored = store.read_box_scores(f.result.name, "det_pool").filter(pl.col("sample_id").is_in(ids))
    joined = f.last.join(stored.rename({"sample_id": "input_ids"}), on=["input_ids", "box"])
    assert joined.height == f.last.height == stored.height > 0
    for t in ("error_proba", "det_error_proba", "cls_error_proba"):
        assert np.allclose(joined[t], joined[f"{t}_right"], atol=1e-5)
    assert (joined["zone"] == joined["zone_right"]).all()
    # One flag per image, from the same BBoxStrategy the CLI query uses.
    from ml_debugger.core.detection.strategy import box_frame

    want = BBoxStrategy.from_value(f.strategy).image_scores(box_frame(stored, f.result.classes), pl.Series(ids))
    assert flags == want.sort(pl.col("sample_id").replace_strict({s: i for i, s in enumerate(ids)}))["flag"].to_list()
    assert any(flags) and not all(flags)
    assert f.last_images["input_ids"].to_list() == ids


def test_no_threshold_no_flags_and_query_uses_the_cli_code(
    det_demo: DetectionDemo, det_scored: Path, tmp_path: Path
) -> None:
    db = tmp_path / "m.duckdb"
    db.write_bytes(det_scored.read_bytes())
    model = torch.export.load(str(det_demo.model)).module()
    f = ObjectDetectionDataFilter(model, model_name="tinydet", version_name="v1", db=db)
    x, ids = _batch(det_demo, 4)
    _, flags = f(x, input_ids=ids)
    assert flags == [None] * 4 and f.last_images.height == 4
    picked = f.query(10, strategy={"bbox_filter": "score>=0.3", "aggregation": "mean", "top_n": 2})
    assert len(picked) == 10 and len(set(picked)) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_class": 5}, "n_class=5, but result"),
        ({"filter_config": {"aggregation": "avg"}}, "aggregation 'avg' is not one of"),
        ({"filter_config": {"bbox_filter": "confidence>=0.3"}}, "unknown column 'confidence'"),
        ({"version_name": "v9"}, "no detection result for model tinydet/v9"),
    ],
)
def test_bad_settings_fail_at_construction(det_demo: DetectionDemo, det_scored: Path, kwargs: dict,
                                           message: str) -> None:  # fmt: skip
    model = torch.export.load(str(det_demo.model)).module()
    args = {"model_name": "tinydet", "version_name": "v1", "db": det_scored, **kwargs}
    with pytest.raises(UsageError) as e:
        ObjectDetectionDataFilter(model, **args)
    assert message in str(e.value)
