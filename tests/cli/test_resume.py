"""kill -9 in the middle of an extraction, then the same command: the run equals an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from ml_debugger.cli.app import app
from ml_debugger.core.demo import DemoFiles
from ml_debugger.core.store import Store
from ml_debugger.errors import StoreError
from tests.conftest import PRE_FLAGS

runner = CliRunner()


def _cmd(data: Path, db: Path, demo: DemoFiles) -> list[str]:
    # Commits every 0.25 s instead of every 2 s: the first one lands while most batches are still
    # to come, so the signal sent when it appears interrupts the run even on a fast machine.
    config = data.parent / "flush_often.yaml"
    config.write_text("extract:\n  flush_seconds: 0.25\n")
    return [sys.executable, "-m", "ml_debugger", "-q", "extract", str(data), "--model", str(demo.model),
            "--name", "big", "--db", str(db), "--classes", str(demo.classes), "--stability", "4",
            "--batch-size", "32", "--workers", "1", "--config", str(config), *PRE_FLAGS]  # fmt: skip


def _big_folder(demo: DemoFiles, tmp_path: Path, copies: int) -> tuple[Path, int]:
    """A flat folder of ``copies`` copies of the demo pool: long enough to interrupt."""
    data = tmp_path / "big"
    data.mkdir()
    for i in range(copies):
        for f in demo.pool.glob("*.png"):
            shutil.copyfile(f, data / f"c{i}_{f.name}")
    return data, len(list(data.glob("*.png")))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLDBG_")}


def _saved(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with Store(db, read_only=True, lock_timeout=2) as store:
            return store.count("samples", "big") if store.get_run("big") else 0
    except StoreError:
        return 0


def _frames(db: Path) -> tuple[pl.DataFrame, np.ndarray, int]:
    with Store(db, read_only=True) as store:
        outputs = store.read_outputs("big")
        _, feats = store.read_features("big")
        dup = store._one("SELECT count(*) - count(DISTINCT sample_id) FROM samples WHERE run = 'big'")
    return outputs, feats, dup


def test_kill_9_then_resume_equals_uninterrupted(demo: DemoFiles, tmp_path: Path) -> None:
    data, n = _big_folder(demo, tmp_path, copies=8)
    env = _clean_env()

    killed_db = tmp_path / "killed.duckdb"
    proc = subprocess.Popen(_cmd(data, killed_db, demo), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while _saved(killed_db) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # reading while it extracts must work (the writer only holds the file to commit)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A SIGKILLed parent can leave its DataLoader worker blocked for good; end the whole group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    partial = _saved(killed_db)
    if not 0 < partial < n:
        pytest.skip(f"could not interrupt mid-run (saved {partial} of {n})")
    resumed = subprocess.run(_cmd(data, killed_db, demo), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    clean_db = tmp_path / "clean.duckdb"
    clean = subprocess.run(_cmd(data, clean_db, demo), env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr

    a, fa, dup_a = _frames(killed_db)
    b, fb, dup_b = _frames(clean_db)
    assert dup_a == dup_b == 0
    assert a.height == b.height == n
    assert a["sample_id"].to_list() == b["sample_id"].to_list()
    assert a["pred"].to_list() == b["pred"].to_list()
    assert a["flip_classes"].to_list() == b["flip_classes"].to_list()
    for col in (
        "confidence",
        "margin",
        "entropy",
        "energy",
        "stability",
        "flip_rate",
        "perturbed_confidence",
    ):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), atol=1e-5, err_msg=col)
    np.testing.assert_allclose(fa, fb, atol=1e-5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupt_saves_finished_batches_and_says_how_to_resume(
    demo: DemoFiles, tmp_path: Path, sig: signal.Signals
) -> None:
    data, n = _big_folder(demo, tmp_path, copies=10)
    db = tmp_path / "x.duckdb"
    env = _clean_env()
    proc = subprocess.Popen(_cmd(data, db, demo), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _saved(db) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    # another terminal queries the database while the extraction writes to it: no lock error
    for _ in range(3):
        r = runner.invoke(app, ["runs", "--db", str(db), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)[0]["name"] == "big"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    saved = _saved(db)
    if proc.returncode == 0:
        pytest.skip("the extraction finished before the signal arrived")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"interrupted: {saved:,} of {n:,} samples" in stderr and "run the same command again to resume" in stderr
    _, _, dup = _frames(db)
    assert dup == 0
