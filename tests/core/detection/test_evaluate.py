"""The per-box error model on the tiny detector's real mistakes: fitted on det_val, held out on
det_pool (whose ground truth is set aside), through the CLI as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from ml_debugger.cli.app import app
from ml_debugger.core.detection.datasets import open_detection_dataset
from ml_debugger.core.detection.demo import DetectionDemo
from ml_debugger.core.detection.evaluate import _image_folds, label_boxes
from ml_debugger.core.metrics import auroc
from ml_debugger.core.store import Store

runner = CliRunner()


@pytest.fixture(scope="module")
def det_db(det_demo: DetectionDemo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = str(tmp_path_factory.mktemp("detdb") / "m.duckdb")
    common = ["--task", "detection", "--model", str(det_demo.model), "--mean", "0.5", "--std", "0.5", "--db", db,
              "--workers", "0"]  # fmt: skip
    for args in (
        [str(det_demo.val), "--format", "coco", "--annotations", str(det_demo.val_annotations), "--name", "det_val"],
        [str(det_demo.pool), "--classes", str(det_demo.classes), "--name", "det_pool"],
    ):
        r = runner.invoke(app, ["extract", *args, *common])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "det_val", "--db", db])
    assert r.exit_code == 0, r.output
    assert "1 − box score" in r.output and "mAP@0.5" in r.output and "labelled boxes" in r.output
    r = runner.invoke(app, ["score", "det_pool", "--db", db])
    assert r.exit_code == 0, r.output
    return Path(db)


def _result(db: Path) -> str:
    with Store(db, read_only=True) as store:
        (name,) = store.result_names()
    return name


def test_the_result_and_its_out_of_fold_box_scores(det_db: Path) -> None:
    name = _result(det_db)
    assert name.startswith("tinydet_v1_od_v1_") or "_od_v1_" in name
    with Store(det_db, read_only=True) as store:
        info = store.require_result(name)
        scores = store.read_box_scores(name, "det_val")
        n_boxes = store.count("boxes", "det_val")
        assert store.scored_info(name, "det_val")["out_of_fold"]
    m = info.metrics
    assert info.task == "detection"
    assert set(info.model["targets"]) == {"error_proba", "det_error_proba", "cls_error_proba"}
    assert scores.height == n_boxes  # no crowd regions here: every box is scored
    assert scores["zone"].null_count() == 0 and scores["error_code"].str.starts_with("DET:").all()
    parts = scores["error_code"].str.extract_groups(r"^DET:(\w+):CLS(.*)->(.*)$").struct.unnest()
    right = (parts["1"] == "A") & (parts["2"] == parts["3"])
    assert m["errors"] == int((~right).sum())
    assert sum(z["count"] for z in m["zones"]) == n_boxes
    assert 0.2 < m["map50"] < 0.99 and m["map"] < m["map50"]
    for target in ("error_proba", "det_error_proba", "cls_error_proba"):
        assert scores[target].is_between(0, 1).all()


def test_error_proba_beats_the_box_score_on_held_out_images(det_db: Path, det_demo: DetectionDemo) -> None:
    name = _result(det_db)
    with Store(det_db, read_only=True) as store:
        pool = store.read_box_scores(name, "det_pool")
        run = store.require_run("det_pool")
    truth = open_detection_dataset(det_demo.pool, annotations=det_demo.pool_annotations)
    lab = label_boxes(pool, truth.boxes, run.classes, 0.5)
    y = ~lab.tp
    ours = auroc(y, pool["error_proba"].to_numpy())
    base = auroc(y, 1 - pool["score"].to_numpy())
    assert ours is not None and base is not None and ours > base, (ours, base)
    confident = pool["score"].to_numpy() >= 0.3
    assert auroc(y[confident], pool["error_proba"].to_numpy()[confident]) > auroc(
        y[confident], 1 - pool["score"].to_numpy()[confident]
    )


def test_folds_keep_each_image_whole() -> None:
    ids = pl.Series(["a", "a", "b", "c", "c", "c", "d"])
    folds = _image_folds(ids, 2, 0)
    frame = pl.DataFrame({"id": ids, "fold": folds})
    assert frame.group_by("id").agg(pl.col("fold").n_unique())["fold"].max() == 1
    assert set(np.unique(folds)) == {0, 1}


def test_scoring_again_is_cached_and_show_prints_detection_metrics(det_db: Path) -> None:
    r = runner.invoke(app, ["score", "det_pool", "--db", str(det_db), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["cached"] is True
    r = runner.invoke(app, ["show", _result(det_db), "--db", str(det_db)])
    assert r.exit_code == 0, r.output
    assert "box codes:" in r.output and "missed ground-truth boxes (NP)" in r.output


def test_query_by_image_score_and_export_every_format(det_db: Path, tmp_path: Path) -> None:
    from ml_debugger.core.detection.strategy import BBoxStrategy, box_frame

    db = tmp_path / "q.duckdb"
    db.write_bytes(det_db.read_bytes())
    args = ["query", "--run", "det_pool", "--bbox-filter", "score>=0.3", "--aggregation", "max", "--top-n", "3",
            "--img-error-threshold", "0.5", "--n", "20", "--db", str(db), "--json"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    answer = json.loads(r.stdout)
    items = answer["items"]
    assert len(items) == 20 and answer["selection"] == "sel-1"
    # The ranking is BBoxStrategy's image score, recomputed here from the stored box scores.
    with Store(db, read_only=True) as store:
        info = store.require_result(_result(db))
        boxes = box_frame(store.read_box_scores(info.name, "det_pool"), info.classes)
    s = BBoxStrategy.from_value({"bbox_filter": "score>=0.3", "aggregation": "max", "top_n": 3,
                                 "img_error_threshold": 0.5})  # fmt: skip
    want = s.image_scores(boxes).filter(pl.col("flag")).sort("img_score", descending=True)
    assert [i["sample_id"] for i in items] == want["sample_id"].head(20).to_list()
    assert all(i["error_proba"] >= 0.5 for i in items)
    out = {}
    for fmt in ("csv", "json", "jsonl", "labelstudio", "coco"):
        path = tmp_path / f"x.{fmt}"
        r = runner.invoke(app, ["export", "sel-1", "--format", fmt, "--out", str(path), "--db", str(db)])
        assert r.exit_code == 0, r.output
        out[fmt] = path.read_text()
    assert pl.read_csv(tmp_path / "x.csv")["sample_id"].to_list() == [i["sample_id"] for i in items]
    lines = [json.loads(x) for x in out["jsonl"].splitlines()]
    kept = dict(boxes.group_by("sample_id").len().iter_rows())  # every box the detector kept is exported
    assert all(len(x["boxes"]) == kept[x["sample_id"]] >= x["n_boxes"] for x in lines)
    coco = json.loads(out["coco"])
    assert len(coco["images"]) == 20 and len(coco["predictions"]) == sum(len(x["boxes"]) for x in lines)
    assert coco["annotations"] == []  # the pool is unlabelled
    tasks = json.loads(out["labelstudio"])
    region = tasks[0]["predictions"][0]["result"][0]
    assert region["type"] == "rectanglelabels" and 0 <= region["value"]["x"] <= 100
    assert region["value"]["rectanglelabels"][0] in ("circle", "square", "triangle")
    r = runner.invoke(app, ["query", "--run", "det_pool", "--strategy", "diverse", "--db", str(db)])
    assert r.exit_code == 2 and "one per box" in r.output
    r = runner.invoke(app, ["query", "--run", "det_pool", "--aggregation", "mode", "--db", str(db)])
    assert r.exit_code == 2 and "aggregation 'mode' is not one of" in r.output


@pytest.mark.parametrize("run", ["det_val", "det_pool"])
def test_report_of_a_detection_result_renders(det_db: Path, tmp_path: Path, run: str) -> None:
    import re

    from tests import browser

    out = tmp_path / f"{run}.html"
    r = runner.invoke(app, ["report", "--run", run, "--db", str(det_db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([a-z-]+)"', page)
    if run == "det_val":
        assert sections == ["overview", "zones", "codes", "ap", "heatmaps", "calibration", "distribution", "gallery"]
        assert "mAP@0.5" in page and "AP@[.5:.95]" in page and "1 − box score" in page
    else:
        assert "shift" in sections and "ap" not in sections and "codes" not in sections
    assert re.findall(r'<img src="data:image/png;base64,', page)  # boxes drawn on real thumbnails
    if browser.chromium() is None:
        return
    rendered = browser.dump_dom(out)
    assert rendered.console == [] and 'data-report-status="ok"' in rendered.dom


def test_report_of_a_labelled_held_out_detection_run(det_db: Path, det_demo: DetectionDemo, tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    db.write_bytes(det_db.read_bytes())
    common = ["--task", "detection", "--model", str(det_demo.model), "--mean", "0.5", "--std", "0.5", "--db", str(db),
              "--workers", "0"]  # fmt: skip
    r = runner.invoke(app, ["extract", str(det_demo.pool), "--format", "coco", "--annotations",
                            str(det_demo.pool_annotations), "--name", "held", *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["score", "held", "--db", str(db)]).exit_code == 0
    out = tmp_path / "held.html"
    r = runner.invoke(app, ["report", "--run", "held", "--db", str(db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    assert "labelled boxes" in page and "held out" in page and "mAP@0.5" in page and 'id="ap"' in page
