"""3D frame datasets (KITTI-style and npy + JSON) and every bad input named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ml_debugger.core.detection.lidar import load_points, open_frames
from ml_debugger.errors import DatasetError

# LiDAR (x forward, y left, z up) to camera (x right, y down, z forward), no rectification.
CALIB = "P0: 0 0 0 0 0 0 0 0 0 0 0 0\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 0 -1 0 0 0 0 -1 0 1 0 0 0\n"


def _kitti(tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    for d in ("velodyne", "label_2", "calib"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in ("000000", "000001"):
        rng.normal(0, 5, (100, 4)).astype(np.float32).tofile(root / "velodyne" / f"{f}.bin")
        (root / "calib" / f"{f}.txt").write_text(CALIB)
    # A car whose LiDAR centre is (10, 2, 0), 3.9 long, 1.6 wide, 1.5 high, heading along −y.
    (root / "label_2" / "000000.txt").write_text(
        "Car 0.0 0 0.0 0 0 50 50 1.5 1.6 3.9 -2.0 0.75 10.0 0.0\nDontCare -1 -1 -10 0 0 1 1 -1 -1 -1 -1 -1 -1 -10\n"
    )
    (root / "label_2" / "000001.txt").write_text("")
    return root


def test_kitti_camera_labels_become_lidar_boxes(tmp_path: Path) -> None:
    ds = open_frames(_kitti(tmp_path))
    assert (
        ds.format == "kitti" and ds.labelled and ds.classes == ["Car"] and ds.sample_ids == ["000000.bin", "000001.bin"]
    )
    (box,) = ds.boxes.to_dicts()
    got = [box[k] for k in ("x", "y", "z", "dx", "dy", "dz", "yaw")]
    assert got == pytest.approx([10.0, 2.0, 0.0, 3.9, 1.6, 1.5, -math.pi / 2], abs=1e-6)


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        ("label_2/000000.txt", "Car 0 0 0 0 0 1 1 1.5 1.6 3.9 -2 0.75\n", "000000.txt:1: 13 fields"),
        ("label_2/000000.txt", "Car 0 0 0 0 0 1 1 1.5 0 3.9 -2 0.75 10 0\n", "000000.txt:1: box size"),
        ("label_2/000000.txt", "Car 0 0 0 0 0 1 1 1.5 x 3.9 -2 0.75 10 0\n", "are not all numbers"),
    ],
)
def test_kitti_bad_labels(tmp_path: Path, path: str, content: str, message: str) -> None:
    root = _kitti(tmp_path)
    (root / path).write_text(content)
    with pytest.raises(DatasetError) as e:
        open_frames(root)
    assert message in str(e.value)


def test_kitti_missing_calib_and_lidar_frame_labels(tmp_path: Path) -> None:
    root = _kitti(tmp_path)
    (root / "calib" / "000000.txt").unlink()
    with pytest.raises(DatasetError, match="000000.txt is missing; KITTI camera-frame labels need it"):
        open_frames(root)
    (root / "label_lidar").mkdir()
    (root / "label_lidar" / "000000.txt").write_text("Pedestrian 5 1 0 0.8 0.6 1.7 0.3\n")
    ds = open_frames(root)
    assert ds.classes == ["Pedestrian"] and ds.boxes["yaw"].to_list() == pytest.approx([0.3])


def test_points_bad_sizes_nan_and_range(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 20)
    with pytest.raises(DatasetError, match="20 bytes is not a multiple of 16"):
        load_points(str(bad))
    pts = np.array([[1, 1, 0, 0.5], [np.nan, 0, 0, 1], [100, 0, 0, 1], [2, -1, 0.5, 0.2]], dtype=np.float32)
    f = tmp_path / "f.bin"
    pts.tofile(f)
    kept, dropped = load_points(str(f), (0, -40, -3, 70.4, 40, 1))
    assert kept.shape == (2, 4) and dropped == 2
    kept, dropped = load_points(str(f), (50, 50, 50, 60, 60, 60))
    assert kept.shape == (0, 4) and dropped == 4


def _npy(tmp_path: Path, boxes: dict) -> Path:
    root = tmp_path / "npy"
    root.mkdir()
    for f in ("a.npy", "b.npy"):
        np.save(root / f, np.zeros((5, 4), dtype=np.float32))
    (root / "classes.txt").write_text("car\nbike\n")
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


def test_npy_with_names_and_indices(tmp_path: Path) -> None:
    ds = open_frames(_npy(tmp_path, {"a.npy": [[1, 2, 0, 4, 2, 1.5, 0.1, "car"], [5, 5, 0, 1, 1, 1, 0, 1]]}))
    assert ds.format == "npy" and ds.classes == ["car", "bike"] and ds.boxes.height == 2
    assert ds.boxes["cls"].to_list() == [0, 1] and ds.sample_ids == ["a.npy", "b.npy"]


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ({"a.npy": [[1, 2, 0, 4, 2, 1.5, "car"]]}, "is not [x, y, z, dx, dy, dz, yaw, label]"),
        ({"a.npy": [[1, 2, 0, -4, 2, 1.5, 0, "car"]]}, "box size [-4.0, 2.0, 1.5] is not positive"),
        ({"zz.npy": []}, "not in"),
        ({"a.npy": [[1, 2, 0, 4, 2, 1.5, 0, 7]]}, "label 7 needs classes.txt"),
        ({"a.npy": [[1, 2, 0, 4, 2, 1.5, 0, "truck"]]}, "class 'truck' of a.npy is not among the classes"),
    ],
)
def test_npy_bad_boxes(tmp_path: Path, boxes: dict, message: str) -> None:
    with pytest.raises(DatasetError) as e:
        open_frames(_npy(tmp_path, boxes))
    assert message in str(e.value)


def test_kitti_prediction_lines_read_back_as_the_same_boxes(tmp_path: Path) -> None:
    """Camera-frame prediction lines (with calib) and LiDAR-frame lines (without) are the exact
    inverse of the label readers: written as labels, they give back the boxes."""
    from ml_debugger.core.detection.lidar import prediction_lines

    root = _kitti(tmp_path)
    rng = np.random.default_rng(1)
    boxes = [
        {"predicted": "Car", "score": 0.9, "x": float(rng.uniform(5, 30)), "y": float(rng.uniform(-10, 10)),
         "z": float(rng.uniform(-1, 1)), "dx": 3.9, "dy": 1.6, "dz": 1.5, "yaw": float(rng.uniform(-3, 3))}
        for _ in range(5)
    ]  # fmt: skip
    with_p2 = CALIB.replace("P0: 0 0 0 0 0 0 0 0 0 0 0 0", "P2: 700 0 600 0 0 700 180 0 0 0 1 0")
    (root / "calib" / "000000.txt").write_text(with_p2)
    camera = prediction_lines(boxes, root / "calib" / "000000.txt")
    assert all(len(line.split()) == 16 for line in camera.splitlines())
    x1, y1, x2, y2 = (float(v) for v in camera.splitlines()[0].split()[4:8])
    assert 0 < x1 < x2 and 0 < y1 < y2  # in front of the camera: a real projected 2D box
    (root / "label_2" / "000000.txt").write_text(camera)
    got = open_frames(root).boxes.filter(open_frames(root).boxes["sample_id"] == "000000.bin")
    want = np.array([[b[k] for k in ("x", "y", "z", "dx", "dy", "dz")] for b in boxes])
    cols = ["x", "y", "z", "dx", "dy", "dz"]
    assert got.select(cols).to_numpy() == pytest.approx(want, abs=2e-4)
    yaw_err = np.angle(np.exp(1j * (got["yaw"].to_numpy() - np.array([b["yaw"] for b in boxes]))))
    assert np.abs(yaw_err).max() < 2e-4
    lidar = prediction_lines(boxes, None)
    (root / "label_lidar").mkdir()
    (root / "label_lidar" / "000000.txt").write_text(lidar)
    again = open_frames(root).boxes.filter(pl.col("sample_id") == "000000.bin")
    assert again.select(cols).to_numpy() == pytest.approx(want, abs=1e-4)
