"""Shared real fixtures, built once per test run: digits PNG folders, a trained CNN in three
formats (torch.export, TorchScript, factory + state dict), and a database extracted from them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ml_debugger.core.demo import PREPROCESS, DemoFiles, build_demo
from ml_debugger.core.detection.demo import DetectionDemo, build_detection_demo
from ml_debugger.core.detection.demo3d import LidarDemo, build_lidar_demo
from ml_debugger.core.extract import ExtractRequest, extract
from ml_debugger.core.stability import StabilityConfig

# Small, fixed thread counts keep the suite fast and repeatable on 2-core CI machines.
torch.set_num_threads(2)

PRE_FLAGS = ["--image-size", "16", "--channels", "1", "--mean", "0.5", "--std", "0.5"]
PRE_KW = dict(image_size=PREPROCESS.image_size, channels=1, mean=PREPROCESS.mean, std=PREPROCESS.std)


@dataclass(frozen=True)
class Models:
    pt2: Path
    ts: Path
    weights: Path
    factory: str = "ml_debugger.core.demo:DigitsNet"


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoFiles:
    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def models(demo: DemoFiles) -> Models:
    """The same trained weights as TorchScript and as a state dict for the factory."""
    from ml_debugger.core.demo import DigitsNet

    program = torch.export.load(str(demo.model))
    net = DigitsNet()
    net.load_state_dict(program.state_dict)
    net.eval()
    ts = demo.root / "model.ts"
    torch.jit.save(torch.jit.script(net), str(ts))
    weights = demo.root / "weights.pt"
    torch.save(net.state_dict(), weights)
    return Models(pt2=demo.model, ts=ts, weights=weights)


@pytest.fixture(scope="session")
def extracted(demo: DemoFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with a labelled `val` run and an unlabelled `pool` run (stability K=4)."""
    db = tmp_path_factory.mktemp("db") / "mldbg.duckdb"
    common = dict(model=str(demo.model), model_name="digits", workers=0, **PRE_KW)
    extract(ExtractRequest(dataset=str(demo.val), name="val", **common), db=db)  # type: ignore[arg-type]
    extract(
        ExtractRequest(dataset=str(demo.pool), name="pool", classes_file=str(demo.classes),
                       stability=StabilityConfig(k=4), **common),  # type: ignore[arg-type]
        db=db,
    )  # fmt: skip
    return db


@pytest.fixture(scope="session")
def det_demo(tmp_path_factory: pytest.TempPathFactory) -> DetectionDemo:
    """The procedural detection demo: det_val (COCO), det_pool (unlabelled), the tiny detector."""
    return build_detection_demo(tmp_path_factory.mktemp("det_demo"))


@pytest.fixture(scope="session")
def lidar_demo(tmp_path_factory: pytest.TempPathFactory) -> LidarDemo:
    """The procedural 3D demo, smaller than `mldbg demo --task detection3d`: lidar_val (KITTI
    layout, LiDAR-frame labels), lidar_pool (unlabelled) and the tiny BEV detector's weights."""
    return build_lidar_demo(tmp_path_factory.mktemp("lidar_demo"), epochs=8, train=240, val=80, pool=60)


@pytest.fixture(scope="session")
def lidar_scored(lidar_demo: LidarDemo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with lidar_val and lidar_pool extracted, a detection3d result fitted on
    lidar_val, and lidar_pool scored. Copy it before writing to it."""
    from ml_debugger.core.detection.demo3d import IOU_THRESH, MODEL, SCORE_THRESH
    from ml_debugger.core.detection.evaluate import evaluate_detection
    from ml_debugger.core.detection.extract3d import Detection3DRequest, extract_frames
    from ml_debugger.core.scoring import score

    db = tmp_path_factory.mktemp("lidar_scored") / "mldbg.duckdb"
    common = dict(model=MODEL, weights=str(lidar_demo.weights), model_name="tinybev", workers=0,
                  score_thresh=SCORE_THRESH, iou_thresh=IOU_THRESH)  # fmt: skip
    for name, folder in (("lidar_val", lidar_demo.val), ("lidar_pool", lidar_demo.pool)):
        extract_frames(Detection3DRequest(dataset=str(folder), name=name, **common), db=db)  # type: ignore[arg-type]
    evaluate_detection("lidar_val", db=db)
    score("lidar_pool", db=db)
    return db


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run in an empty working directory without MLDBG_* variables."""
    for key in list(os.environ):
        if key.startswith("MLDBG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_configure(config: pytest.Config) -> None:
    sys.dont_write_bytecode = True


@pytest.fixture(scope="session")
def scored(demo: DemoFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with `val` and `pool` (both K=4), a result fitted on `val`, and `pool` scored.

    Copy it (``shutil.copy``) before writing to it.
    """
    from ml_debugger.core.evaluate import evaluate
    from ml_debugger.core.scoring import score

    db = tmp_path_factory.mktemp("scored") / "mldbg.duckdb"
    common = dict(model=str(demo.model), model_name="digits", workers=0, stability=StabilityConfig(k=4), **PRE_KW)
    extract(ExtractRequest(dataset=str(demo.val), name="val", **common), db=db)  # type: ignore[arg-type]
    extract(ExtractRequest(dataset=str(demo.pool), name="pool", classes_file=str(demo.classes), **common), db=db)  # type: ignore[arg-type]
    evaluate("val", db=db)
    score("pool", db=db)
    return db
