"""The DuckDB store: schema versions, migrations, clear errors, atomic batches, locks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from ml_debugger.core.store import MIGRATIONS, SCHEMA_VERSION, RunInfo, Store
from ml_debugger.errors import NotFoundError, StoreError


def _run(name: str = "r") -> RunInfo:
    return RunInfo(
        name=name, task="classification", model_name="m", model_version="v1", model_path="m.pt2",
        model_format="export", model_sha256="x", dataset_path="/d", dataset_format="folder", labelled=True,
        classes=["a", "b"], feature_layer="fc", feature_dim=4, stability_k=0, settings={"a": 1}, fingerprint="f",
    )  # fmt: skip


def _batch(ids: list[str]) -> dict:
    n = len(ids)
    samples = pl.DataFrame({"sample_id": ids, "path": ids, "label": pl.Series([0] * n, dtype=pl.Int32)})
    outputs = pl.DataFrame({
        "sample_id": ids, "pred": pl.Series([1] * n, dtype=pl.Int32),
        **{c: pl.Series([0.5] * n, dtype=pl.Float32) for c in ("confidence", "margin", "entropy", "energy")},
        "probs": pl.Series([[0.5, 0.5]] * n, dtype=pl.List(pl.Float32)),
    })  # fmt: skip
    return {
        "samples": samples,
        "outputs": outputs,
        "features": np.arange(n * 4, dtype=np.float32).reshape(n, 4),
    }


def test_new_file_has_current_schema_and_round_trips(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    with Store(db) as store:
        store.create_run(_run())
        store.write_batch("r", **_batch(["x", "y"]))
    with Store(db, read_only=True) as store:
        assert store._one("SELECT value FROM meta WHERE key='schema_version'") == str(SCHEMA_VERSION)
        run = store.require_run("r")
        assert run.classes == ["a", "b"] and run.settings == {"a": 1}
        ids, feats = store.read_features("r")
        assert ids == ["x", "y"] and feats.shape == (2, 4) and feats.dtype == np.float32
        assert feats[1].tolist() == [4, 5, 6, 7]
        types = dict(store.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='features_4'"
        ).fetchall())  # fmt: skip
        assert types["feature"] == "FLOAT[4]"  # fixed-size array, not a list
        assert store.read_outputs("r").height == 2


def test_older_schema_is_migrated_and_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    MIGRATIONS[0](con)  # the version-1 layout: runs has no checkpoint column yet
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute(
        "INSERT INTO runs (name, task, model_name, model_version, dataset_path, dataset_format, labelled, classes,"
        " settings, fingerprint, status, created) VALUES ('old', 'classification', 'm', 'v1', '/d', 'folder',"
        " false, ['a'], '{}', 'f', 'complete', now())"
    )
    con.close()
    with Store(db, read_only=True) as store:  # a reader migrates through a short writer
        run = store.require_run("old")
        assert run.checkpoint is None
        assert store._one("SELECT value FROM meta WHERE key='schema_version'") == str(SCHEMA_VERSION)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.duckdb"
    Store(db).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match=r"schema version 99, newer .* upgrade mldbg"):
        Store(db)


def test_not_a_duckdb_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.duckdb"
    bad.write_text("hello, this is not a database\n" * 100)
    with pytest.raises(StoreError, match="not a readable DuckDB database"):
        Store(bad)
    assert bad.read_text().startswith("hello")  # left untouched


def test_foreign_duckdb_file(tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    with pytest.raises(StoreError, match="not an mldbg database"):
        Store(other)


def test_missing_file_for_reading(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no mldbg database at .*mldbg extract"):
        Store(tmp_path / "absent.duckdb", read_only=True)
    assert not (tmp_path / "absent.duckdb").exists()


def test_batch_is_atomic(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    with Store(db) as store:
        store.create_run(_run())
        bad = _batch(["x", "y"])
        bad["outputs"] = bad["outputs"].drop("pred")  # NOT NULL column missing: the insert fails
        with pytest.raises(duckdb.Error):
            store.write_batch("r", **bad)
        assert store.count("samples", "r") == 0  # the samples of the failed batch were rolled back
        assert "features_4" not in store._feature_tables()  # even the table creation was rolled back


def test_drop_run_removes_everything(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    with Store(db) as store:
        store.create_run(_run("a"))
        store.create_run(_run("b"))
        store.write_batch(
            "a", **_batch(["x"]), skipped=pl.DataFrame({"sample_id": ["z"], "path": ["z"], "reason": ["r"]})
        )
        store.write_batch("b", **_batch(["x"]))
        store.drop_run("a")
        assert store.get_run("a") is None
        assert store.list_runs()["name"].to_list() == ["b"]
        for table in ("samples", "outputs", "skipped", "features_4"):
            assert store._one(f"SELECT count(*) FROM {table} WHERE run = 'a'") == 0
        with pytest.raises(NotFoundError, match="no run named 'nope'.*runs: b"):
            store.drop_run("nope")


def test_busy_database_waits_then_explains(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    Store(db).close()
    code = f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('ok', flush=True); time.sleep(3)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreError, match="busy: another mldbg process .* MLDBG_LOCK_TIMEOUT"):
            Store(db, read_only=True, lock_timeout=0.3)
        t0 = time.monotonic()
        with Store(db, read_only=True, lock_timeout=30) as store:  # waits for the holder to exit
            assert store.list_runs().height == 0
        assert time.monotonic() - t0 > 0.5
    finally:
        holder.kill()
        holder.wait()


def _other_process_can_open(db: Path) -> bool:
    code = f"import duckdb; duckdb.connect({str(db)!r}).close()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_stores_of_one_file_share_it_and_the_last_close_unlocks_it(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    first = Store(db)
    first.create_run(_run())
    with Store(db) as second:  # the same process: the same attached file, not a lock conflict
        second.write_batch("r", **_batch(["x"]))
        assert first.count("samples", "r") == 1
    assert not _other_process_can_open(db)  # `first` still holds it
    first.close()
    first.close()  # twice is harmless
    assert _other_process_can_open(db)
    assert not (tmp_path / "a.duckdb.wal").exists()  # closing checkpointed the file


def test_settings_hold_while_open_and_return_to_the_baseline_at_close(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    with Store(db) as store:
        default = store._one("SELECT current_setting('threads')")
        assert store._one("SELECT current_setting('max_vacuum_tasks')") == 0  # the stores' baseline
    with Store(db, settings={"threads": 1, "max_vacuum_tasks": 7}) as store:
        assert store._one("SELECT current_setting('threads')") == 1
        assert store._one("SELECT current_setting('max_vacuum_tasks')") == 7
    with Store(db, read_only=True) as store:
        assert store._one("SELECT current_setting('threads')") == default  # DuckDB's default
        assert store._one("SELECT current_setting('max_vacuum_tasks')") == 0  # the baseline


def test_a_file_open_read_only_cannot_be_written_by_another_store(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    Store(db).close()
    with Store(db, read_only=True), pytest.raises(StoreError, match="open read-only in this process"):
        Store(db)
    with Store(db) as store:  # once it is closed, writing works
        store.create_run(_run())
