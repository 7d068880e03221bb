"""3D detection end to end on the procedural LiDAR demo: extraction (points per box, skipped
frames, resume), the od3d result, real-time flags equal to the batch path, query and exports."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from ml_debugger.cli.app import app
from ml_debugger.core.detection.bevdet import build
from ml_debugger.core.detection.demo3d import IOU_THRESH, MODEL, SCORE_THRESH, LidarDemo
from ml_debugger.core.detection.extract3d import Detection3DRequest, extract_frames
from ml_debugger.core.detection.lidar_scenes import PC_RANGE
from ml_debugger.core.store import Store
from ml_debugger.data_filter import ObjectDetection3DDataFilter
from ml_debugger.errors import Interrupted, UsageError

runner = CliRunner()
BOX7 = ["x", "y", "z", "dx", "dy", "dz", "yaw"]


def _request(demo: LidarDemo, dataset: Path, name: str, **kw: object) -> Detection3DRequest:
    return Detection3DRequest(dataset=str(dataset), name=name, model=MODEL, weights=str(demo.weights),  # type: ignore[arg-type]
                              model_name="tinybev", workers=0, score_thresh=SCORE_THRESH, iou_thresh=IOU_THRESH,
                              **kw)  # fmt: skip


def _inside_loop(points: np.ndarray, box: list[float]) -> int:
    """Points inside one box, the slow obvious way (a rotation matrix per box)."""
    c, s = math.cos(box[6]), math.sin(box[6])
    rot = np.array([[c, s], [-s, c]])  # world → box frame
    local = (points[:, :2] - box[:2]) @ rot.T
    dz = np.abs(points[:, 2] - box[2])
    return int(((np.abs(local[:, 0]) <= box[3] / 2) & (np.abs(local[:, 1]) <= box[4] / 2) & (dz <= box[5] / 2)).sum())


def test_extraction_stores_frames_boxes_and_points_inside(lidar_demo: LidarDemo, lidar_scored: Path) -> None:
    with Store(lidar_scored, read_only=True) as store:
        run = store.require_run("lidar_val")
        boxes, gt, frames = (
            store.read_boxes("lidar_val"),
            store.read_gt_boxes("lidar_val"),
            store.read_images("lidar_val"),
        )
    assert run.task == "detection3d" and run.labelled and run.classes == ["car", "pedestrian", "cyclist"]
    assert run.settings["pc_range"] == list(PC_RANGE)  # the model's own pc_range attribute
    assert frames.height == 80 and frames["width"].is_null().all() and (frames["n_points"] > 0).all()
    assert gt.height > 0 and not gt["crowd"].any()
    assert boxes.height == frames["n_boxes"].sum() and (boxes["score"] >= SCORE_THRESH).all()
    # x1..y2 is the footprint's axis-aligned extent: it contains the centre, and a box with yaw 0
    # would span exactly dx by dy.
    assert ((boxes["x1"] <= boxes["x"]) & (boxes["x"] <= boxes["x2"]) & (boxes["y1"] <= boxes["y"])).all()
    span = (boxes["x2"] - boxes["x1"]) * (boxes["y2"] - boxes["y1"])
    assert (span >= boxes["dx"] * boxes["dy"] * (1 - 1e-4)).all()
    for sid in frames["sample_id"][:5]:
        pts = np.fromfile(lidar_demo.val / "velodyne" / sid, dtype=np.float32).reshape(-1, 4)
        lo, hi = np.array(PC_RANGE[:3]), np.array(PC_RANGE[3:])
        pts = pts[((pts[:, :3] >= lo) & (pts[:, :3] < hi)).all(1)]
        frame_boxes = boxes.filter(pl.col("sample_id") == sid)
        want = [_inside_loop(pts, b) for b in frame_boxes.select(BOX7).rows()]
        assert frame_boxes["n_points"].to_list() == want
        assert frames.filter(pl.col("sample_id") == sid)["n_points"][0] == len(pts)


def test_bad_frames_are_skipped_with_their_reason(lidar_demo: LidarDemo, tmp_path: Path) -> None:
    root = tmp_path / "frames"
    root.mkdir()
    src = sorted((lidar_demo.pool / "velodyne").glob("*.bin"))[:3]
    good = np.fromfile(src[0], dtype=np.float32).reshape(-1, 4)
    np.save(root / "a_good.npy", good)
    with_nan = np.fromfile(src[1], dtype=np.float32).reshape(-1, 4)
    with_nan[:10, 0] = np.nan
    np.save(root / "b_nan.npy", with_nan)
    np.save(root / "c_far.npy", good + np.array([500, 0, 0, 0], dtype=np.float32))  # nothing inside pc_range
    (root / "d_broken.npy").write_bytes(b"not numpy")
    (root / "classes.txt").write_text("car\npedestrian\ncyclist\n")
    summary = extract_frames(_request(lidar_demo, root, "bad"), db=tmp_path / "m.duckdb")
    assert summary.n_samples == 2 and summary.n_skipped == 2
    with Store(tmp_path / "m.duckdb", read_only=True) as store:
        skipped = dict(store.read_skipped("bad").select("sample_id", "reason").rows())
        frames = store.read_images("bad")
    assert "no point inside pc_range" in skipped["c_far.npy"] and "d_broken.npy" in skipped
    n_nan = frames.filter(pl.col("sample_id") == "b_nan.npy")["n_points"][0]
    assert n_nan == len(with_nan) - 10 - int(
        (~((with_nan[10:, :3] >= PC_RANGE[:3]) & (with_nan[10:, :3] < PC_RANGE[3:])).all(1)).sum()
    )


def test_an_interrupted_extraction_resumes_to_the_same_run(lidar_demo: LidarDemo, tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    calls = []

    def stop_after_two_batches(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    req = _request(lidar_demo, lidar_demo.pool, "pool", batch_size=8, flush_seconds=0.0)
    with pytest.raises(Interrupted):
        extract_frames(req, db=db, progress=stop_after_two_batches)
    with Store(db, read_only=True) as store:
        partial = store.count("samples", "pool")
    assert 0 < partial < 60
    resumed = extract_frames(req, db=db)
    assert resumed.resumed and resumed.n_new == 60 - partial
    extract_frames(_request(lidar_demo, lidar_demo.pool, "whole", batch_size=8), db=db)
    with Store(db, read_only=True) as store:
        a, b = store.read_boxes("pool"), store.read_boxes("whole")
        fa, fb = store.box_features("pool", 64), store.box_features("whole", 64)
    assert a.equals(b) and np.array_equal(fa, fb)


def test_the_od3d_result_beats_the_box_score_and_codes_every_box(lidar_scored: Path) -> None:
    with Store(lidar_scored, read_only=True) as store:
        (name,) = store.result_names()
        info = store.require_result(name)
        n_boxes = store.count("boxes", "lidar_val")
    assert re.fullmatch(r"tinybev_v1_od3d_v1_\d{8}", name) and info.task == "detection3d"
    m = info.metrics
    assert m["iou"] == {"mode": "bev", "threshold": 0.5} and info.model["signals"][3:5] == ["log_range", "log_points"]
    assert sum(m["codes"].values()) == n_boxes == m["samples"]
    # Out-of-fold, on whole frames: the error model must add to the detector's own score.
    assert m["detectors"]["error_proba"]["auroc"] > m["detectors"]["one_minus_score"]["auroc"]
    assert 0.0 < m["map50"] < 1.0


def test_3d_iou_matching_is_stricter_than_bev(lidar_scored: Path, tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    shutil.copy(lidar_scored, db)
    with Store(db, read_only=True) as store:
        (first,) = store.result_names()
        bev = store.require_result(first).metrics
    config = tmp_path / "c.yaml"
    config.write_text("evaluate:\n  iou_mode_3d: '3d'\n")
    res = runner.invoke(app, ["evaluate", "lidar_val", "--config", str(config), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    strict = json.loads(res.stdout)["metrics"]
    assert strict["iou"]["mode"] == "3d" and strict["codes"]["A"] <= bev["codes"]["A"]
    config.write_text("evaluate:\n  iou_mode_3d: volume\n")
    res = runner.invoke(app, ["evaluate", "lidar_val", "--config", str(config), "--db", str(db)])
    assert res.exit_code != 0 and "iou_mode_3d 'volume' must be bev or 3d" in res.output


def test_real_time_flags_equal_the_batch_scores(lidar_demo: LidarDemo, lidar_scored: Path) -> None:
    model = build()
    model.load_state_dict(torch.load(lidar_demo.weights, weights_only=True))
    config = {"img_error_threshold": 0.5, "aggregation": "max", "bbox_filter": "score>=0.3"}
    f = ObjectDetection3DDataFilter(model, "tinybev", "v1", filter_config=config, n_class=3, score_thresh=SCORE_THRESH,
                                    iou_thresh=IOU_THRESH, db=lidar_scored)  # fmt: skip
    paths = sorted((lidar_demo.pool / "velodyne").glob("*.bin"))[:12]
    ids = [p.name for p in paths]
    points = [torch.from_numpy(np.fromfile(p, dtype=np.float32).reshape(-1, 4)) for p in paths]
    raw = model([p[torch.from_numpy(np.isfinite(p.numpy()).all(1))] for p in points])
    output, flags = f(points, input_ids=ids)
    with Store(lidar_scored, read_only=True) as store:
        stored = store.read_box_scores(f.result.name, "lidar_pool").filter(pl.col("sample_id").is_in(ids))
    assert f.last.height == stored.height > 0
    assert np.abs(f.last["error_proba"].to_numpy() - stored["error_proba"].to_numpy()).max() < 1e-5
    assert f.last["zone"].to_list() == stored["zone"].to_list()
    per_frame = stored.filter(pl.col("score") >= 0.3).group_by("sample_id").agg(pl.col("error_proba").max())
    want = {s: p >= 0.5 for s, p in per_frame.rows()}
    assert flags == [want.get(i, False) for i in ids]
    assert set(output) == {"boxes", "logits", "objectness", "features"}
    assert torch.equal(output["boxes"][0][:5], raw["boxes"][0][:5])  # the model's own output, untouched
    with pytest.raises(UsageError, match="input_ids has 1 ids for a batch of 12 frames"):
        f(points, input_ids=["x"])
    with pytest.raises(UsageError, match="pc-range"):
        ObjectDetection3DDataFilter(model, "tinybev", "v1", pc_range=[0, 0, 0, 1, 1], db=lidar_scored)


def test_query_and_exports_per_frame(lidar_scored: Path, tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    shutil.copy(lidar_scored, db)
    common = ["--db", str(db)]
    res = runner.invoke(app, ["query", "--run", "lidar_pool", "--img-error-threshold", "0.5", "--aggregation", "max",
                              "--bbox-filter", "score>=0.3", "--n", "10", *common])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "frame(s) flagged" in res.output
    out = tmp_path / "frames.jsonl"
    assert runner.invoke(app, ["export", "--format", "jsonl", "--out", str(out), *common]).exit_code == 0
    items = [json.loads(line) for line in out.read_text().splitlines()]
    # Every kept box of a frame is exported; n_boxes counts those the strategy's filter kept.
    assert len(items) == 10
    assert all(item["n_boxes"] == sum(b["score"] >= 0.3 for b in item["boxes"]) for item in items)
    assert set(BOX7) | {"n_points", "error_proba", "zone"} <= set(items[0]["boxes"][0])
    csv = pl.read_csv(runner.invoke(app, ["export", "--format", "csv", "--out", "-", *common]).output.encode())
    assert csv.height == 10 and len(json.loads(csv["boxes"][0])) == len(items[0]["boxes"])
    kitti = tmp_path / "kitti"
    assert runner.invoke(app, ["export", "--format", "kitti", "--out", str(kitti), *common]).exit_code == 0
    assert sorted(p.stem for p in kitti.iterdir()) == sorted(Path(i["sample_id"]).stem for i in items)
    first = (kitti / f"{Path(items[0]['sample_id']).stem}.txt").read_text().splitlines()
    assert len(first) == len(items[0]["boxes"]) and first[0].split()[0] in ("car", "pedestrian", "cyclist")
    again = runner.invoke(app, ["export", "--format", "kitti", "--out", str(kitti), *common])
    assert again.exit_code != 0 and "not an empty folder" in again.output
    coco = runner.invoke(app, ["export", "--format", "coco", "--out", str(tmp_path / "c.json"), *common])
    assert coco.exit_code != 0 and "export 3D frames as kitti, jsonl, json or csv" in coco.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "detection3d", "--pc-range", "0,0,0,1,1"], "--pc-range [0.0, 0.0, 0.0, 1.0, 1.0] must be 6"),
        (["--task", "detection3d", "--pc-range", "0,0,0,-1,1,1"], "each min below its max"),
        (["--task", "detection", "--format", "kitti"], "add --task detection3d"),
        (["--task", "detection3d", "--format", "coco"], "--format kitti or npy"),
    ],
)
def test_bad_3d_options_are_named(lidar_demo: LidarDemo, tmp_path: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["extract", str(lidar_demo.val), "--model", MODEL, "--weights", str(lidar_demo.weights),
                              "--db", str(tmp_path / "m.duckdb"), *args])  # fmt: skip
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Traceback" not in res.output


def test_extract_cli_on_an_image_folder_says_no_frames(lidar_demo: LidarDemo, tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"")
    res = runner.invoke(app, ["extract", str(tmp_path / "imgs"), "--task", "detection3d", "--model", MODEL,
                              "--weights", str(lidar_demo.weights), "--db", str(tmp_path / "m.duckdb")])  # fmt: skip
    assert res.exit_code != 0 and "holds no frames" in res.output


@pytest.mark.parametrize("run", ["lidar_val", "lidar_pool"])
def test_report_of_a_3d_result_draws_frames_in_birds_eye_view(lidar_scored: Path, tmp_path: Path, run: str) -> None:
    from tests import browser

    out = tmp_path / f"{run}.html"
    r = runner.invoke(app, ["report", "--run", run, "--db", str(lidar_scored), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([a-z-]+)"', page)
    if run == "lidar_val":
        assert sections == ["overview", "zones", "codes", "ap", "heatmaps", "calibration", "distribution", "gallery"]
        assert "(BEV IoU)" in page
    else:
        assert "shift" in sections and "ap" not in sections
    assert "-eye view, 24 m around the box" in page and re.findall(r'<img src="data:image/png;base64,', page)
    assert 'class="missing"' not in page
    if browser.chromium() is None:
        return
    rendered = browser.dump_dom(out)
    assert rendered.console == [] and 'data-report-status="ok"' in rendered.dom


def test_camera_frame_kitti_through_the_cli(lidar_demo: LidarDemo, lidar_scored: Path, tmp_path: Path) -> None:
    """A KITTI folder with camera-frame labels and calib files: extracted, scored, queried and
    exported as camera-frame prediction files, one per selected frame."""
    from ml_debugger.core.detection.lidar import prediction_lines

    calib = (
        "P2: 700 0 600 0 0 700 180 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 0 -1 0 0 0 0 -1 0 1 0 0 0\n"
    )
    root = tmp_path / "kitti"
    for d in ("velodyne", "label_2", "calib"):
        (root / d).mkdir(parents=True)
    (root / "classes.txt").write_text("car\npedestrian\ncyclist\n")
    for src in sorted((lidar_demo.val / "velodyne").glob("*.bin"))[:10]:
        shutil.copy(src, root / "velodyne" / src.name)
        (root / "calib" / f"{src.stem}.txt").write_text(calib)
        truth = [line.split() for line in (lidar_demo.val / "label_lidar" / f"{src.stem}.txt").read_text().splitlines()]
        boxes = [{"predicted": t[0], "score": 1.0, **dict(zip(BOX7, map(float, t[1:8]), strict=True))} for t in truth]
        (root / "label_2" / f"{src.stem}.txt").write_text(prediction_lines(boxes, root / "calib" / f"{src.stem}.txt"))
    db = tmp_path / "m.duckdb"
    shutil.copy(lidar_scored, db)
    common = ["--db", str(db)]
    post = ["--score-thresh", str(SCORE_THRESH), "--iou-thresh", str(IOU_THRESH)]
    res = runner.invoke(app, ["extract", str(root), "--task", "detection3d", "--model", MODEL, "--weights",
                              str(lidar_demo.weights), "--model-name", "tinybev", "--format", "kitti", "--name", "cam",
                              *post, *common])  # fmt: skip
    assert res.exit_code == 0, res.output
    with Store(db, read_only=True) as store:
        gt = store.read_gt_boxes("cam")
        want = store.read_gt_boxes("lidar_val").filter(pl.col("sample_id").is_in(gt["sample_id"].unique().to_list()))
    assert gt.select(BOX7[:6]).to_numpy() == pytest.approx(want.select(BOX7[:6]).to_numpy(), abs=2e-4)
    assert runner.invoke(app, ["score", "cam", *common]).exit_code == 0
    assert runner.invoke(app, ["query", "--run", "cam", "--n", "4", *common]).exit_code == 0
    out = tmp_path / "pred"
    assert runner.invoke(app, ["export", "--format", "kitti", "--out", str(out), *common]).exit_code == 0
    files = sorted(out.iterdir())
    assert len(files) == 4
    lines = [ln.split() for f in files for ln in f.read_text().splitlines()]
    assert lines and all(len(ln) == 16 and ln[1:3] == ["-1", "-1"] for ln in lines)  # KITTI's camera-frame result
