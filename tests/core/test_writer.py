"""The extraction's writer: how its commits lay rows out in DuckDB."""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_debugger.core.demo import DemoFiles
from ml_debugger.core.extract import ExtractRequest, extract
from ml_debugger.core.signals import softmax_signals
from ml_debugger.core.store import RunInfo, Store
from ml_debugger.core.writer import _VACUUM_TASKS, VACUUM_BELOW_ROWS, BatchWriter, RawBatch
from ml_debugger.errors import ModelError
from tests.conftest import PRE_KW


def _raw(start: int, n: int) -> RawBatch:
    ids = [f"s{start + i:06d}" for i in range(n)]
    gen = torch.Generator().manual_seed(start)
    return RawBatch(
        ids=ids, paths=ids, labels=[None] * n, signals=softmax_signals(torch.randn(n, 3, generator=gen)),
        features=torch.randn(n, 8, generator=gen),
    )  # fmt: skip


def _writer(db: Path) -> BatchWriter:
    info = RunInfo(
        name="r", task="classification", model_name="m", model_version="v1", model_path="m.pt2",
        model_format="export", model_sha256="x", dataset_path="/d", dataset_format="flat", labelled=False,
        classes=["a", "b", "c"], feature_layer="fc", feature_dim=8, stability_k=0, settings={}, fingerprint="f",
    )  # fmt: skip
    with Store(db) as store:
        store.create_run(info)
    return BatchWriter(db, "r", flush_seconds=3600)


def _row_groups(db: Path) -> int:
    with Store(db, read_only=True) as store:
        return store._one("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('features_8')")


def test_large_commits_keep_their_row_groups_and_a_small_last_one_merges_nothing(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    writer = _writer(db)
    sizes = [VACUUM_BELOW_ROWS] * 3 + [100]
    for i, n in enumerate(sizes):
        writer._commit([_raw(i * VACUUM_BELOW_ROWS, n)])
    writer.close()
    assert _row_groups(db) == len(sizes)
    with Store(db, read_only=True) as store:
        ids, feats = store.read_features("r")
    assert len(ids) == len(set(ids)) == sum(sizes) and feats.shape == (sum(sizes), 8)


@pytest.mark.parametrize("merging", [False, True])
def test_later_stores_leave_the_row_groups_of_large_commits_alone(tmp_path: Path, merging: bool) -> None:
    """Every store checkpoints at close (the one that marks the run complete, `mldbg evaluate`'s);
    by default none merges the row groups the run's commits kept apart. The control turns
    DuckDB's merging back on, and the whole run is re-written into one row group."""
    db = tmp_path / "a.duckdb"
    writer = _writer(db)
    for i in range(3):
        writer._commit([_raw(i * VACUUM_BELOW_ROWS, VACUUM_BELOW_ROWS)])
    writer.close()
    with Store(db, settings={"max_vacuum_tasks": _VACUUM_TASKS} if merging else None) as store:
        store.update_run("r", status="complete", finished=datetime.now(), n_expected=3 * VACUUM_BELOW_ROWS)
    assert _row_groups(db) == (1 if merging else 3)


def test_a_run_of_small_commits_is_merged_into_few_row_groups(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    writer = _writer(db)
    for i in range(8):
        writer._commit([_raw(i * 100, 100)])
    writer.close()
    assert _row_groups(db) < 8  # DuckDB's vacuum merged them, as it does for any small appends
    with Store(db, read_only=True) as store:
        assert store.count("samples", "r") == 800


def test_the_writer_owns_what_it_buffers(tmp_path: Path) -> None:
    """Buffered batches must not keep the forward-pass thread's tensors alive (see own_raw)."""
    from ml_debugger.core.writer import own_raw

    raw = _raw(0, 16)
    feats, probs = raw.features, raw.signals["probs"]  # type: ignore[index]
    owned = own_raw(raw)
    assert isinstance(owned.features, np.ndarray) and not np.shares_memory(owned.features, feats.numpy())
    assert not np.shares_memory(owned.signals["probs"], probs.numpy())  # type: ignore[index]
    np.testing.assert_array_equal(owned.features, feats.numpy())
    np.testing.assert_array_equal(owned.signals["probs"], probs.numpy())  # type: ignore[index]


def _duckdb_threads(db: Path) -> int:
    with Store(db) as store:
        return int(store._one("SELECT current_setting('threads')"))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="DuckDB's default is one thread on one core")
def test_duckdb_runs_on_one_thread_from_the_first_writer_to_the_last_close(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    _writer(db).close()
    default = _duckdb_threads(db)
    assert default > 1
    first = BatchWriter(db, "r", flush_seconds=3600)
    assert _duckdb_threads(db) == 1
    second = BatchWriter(db, "r", flush_seconds=3600)
    first.close()
    first.close()  # a second close gives nothing back twice
    assert _duckdb_threads(db) == 1
    second.close()
    assert _duckdb_threads(db) == default


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux's /proc")
def test_commits_start_no_threads(tmp_path: Path) -> None:
    """Setting DuckDB's thread count for each commit and resetting it after made DuckDB start a
    worker thread after every commit (and stop it at the next); the writer's hold does not."""
    db = tmp_path / "a.duckdb"
    writer = _writer(db)
    seen = []
    for i in range(3):
        writer._commit([_raw(i * 100, 100)])
        seen.append(set(os.listdir("/proc/self/task")))
    writer.close()
    assert seen[0] == seen[1] == seen[2]


def test_a_model_failing_mid_run_keeps_the_finished_batches_and_stops_the_writer(
    demo: DemoFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flaky.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.calls = 0\n"
        "        self.fc = torch.nn.Linear(256, 10)\n"
        "    def forward(self, x):\n"
        "        self.calls += 1  # the probe, then two good batches, then a malformed output\n"
        "        out = self.fc(x.flatten(1))\n"
        "        return out if self.calls <= 3 else out[:, None]\n"
        "def build():\n    return Net()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    db = tmp_path / "m.duckdb"
    before = _duckdb_threads(db)
    req = ExtractRequest(dataset=str(demo.val), name="val", model="flaky:build", batch_size=64, workers=0, **PRE_KW)
    with pytest.raises(ModelError, match="returned"):
        extract(req, db=db)
    with Store(db, read_only=True) as store:
        assert store.count("samples", "val") == 128
    assert not any(t.name == "mldbg-writer" for t in threading.enumerate())
    assert _duckdb_threads(db) == before
    sys.modules.pop("flaky", None)
