"""The store's connection: opening, locking, schema checks and migrations, transactions."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl

from ml_debugger.core.store._schema import MIGRATIONS, SCHEMA_VERSION
from ml_debugger.errors import StoreError

log = logging.getLogger(__name__)
_S = TypeVar("_S", bound="StoreBase")

DEFAULT_DB = "mldbg.duckdb"
DB_ENV = "MLDBG_DB"
LOCK_TIMEOUT_ENV = "MLDBG_LOCK_TIMEOUT"
# Another process (an extraction flushing a batch) may hold the file for a moment; wait this
# long for it before giving up with a clear message.
DEFAULT_LOCK_TIMEOUT_S = 30.0


def resolve_db_path(db: str | os.PathLike[str] | None = None) -> Path:
    """The DuckDB file to use: ``db`` if given, else ``$MLDBG_DB``, else ``./mldbg.duckdb``."""
    return Path(db or os.environ.get(DB_ENV) or DEFAULT_DB)


def _lock_timeout() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise StoreError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds; e.g. {LOCK_TIMEOUT_ENV}=30") from None


# Settings every store of this process starts from and returns to. DuckDB's checkpoint (at
# every store's close) otherwise merges adjacent row groups into full ones ("vacuum"): an
# extraction appends one row group per commit (thousands of rows), and merging a run's row
# groups re-wrote all of it (0.60 s for 100,000 rows, and the file grew from 66 to 113 MiB),
# while reading them unmerged was only slightly slower (134-137 against 126 ms). The writer
# turns merging back on for its small commits (``writer.BatchWriter.settings``), so a slow
# model's run does not pile up tiny row groups; whole row groups of deleted rows are dropped
# without it.
BASELINE_SETTINGS: dict[str, int] = {"max_vacuum_tasks": 0}


class _Attachments:
    """Database files ATTACHed to one in-memory DuckDB instance per process.

    Creating a DuckDB instance costs ~15 ms of CPU (its catalog and thread pool); attaching a
    file to a live one costs ~1 ms. Detaching closes the file (checkpointing it) and releases
    its lock, exactly as closing a connection did, so other processes can open it between two
    stores. A file open in several stores of this process is attached once and shared; each
    store gets its own connection (cursor) whose default database is that file.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db: duckdb.DuckDBPyConnection | None = None
        self._files: dict[str, list[Any]] = {}  # real path -> [alias, read_only, users]
        self._count = 0
        self._single_thread = 0  # holders of hold_single_thread() not released yet

    def _instance(self) -> duckdb.DuckDBPyConnection:
        """The process's DuckDB instance, created on first use (call with the lock held)."""
        if self._db is None:
            self._db = duckdb.connect(":memory:")
            for name, value in BASELINE_SETTINGS.items():
                self._db.execute(f"SET {name} = {value}")
            if self._single_thread:
                self._db.execute("SET threads = 1")
        return self._db

    def hold_single_thread(self, hold: bool) -> None:
        """Take (``True``) or give back (``False``) a hold on DuckDB's thread count: while any
        hold is taken, the instance runs every store on one thread; the last give-back returns
        it to DuckDB's default (one thread per core)."""
        with self._lock:
            before = self._single_thread
            self._single_thread = max(0, before + (1 if hold else -1))
            if self._db is not None and (before == 0) != (self._single_thread == 0):
                self._db.execute("SET threads = 1" if self._single_thread else "RESET threads")

    def open(self, path: Path, read_only: bool) -> tuple[duckdb.DuckDBPyConnection, str]:
        """(a connection using the attached file, the key to ``release`` it with)."""
        key = os.path.realpath(path)
        with self._lock:
            db = self._instance()
            entry = self._files.get(key)
            if entry is None:
                alias = f"mldbg_{self._count}"
                self._count += 1
                quoted = str(path).replace("'", "''")
                db.execute(f"ATTACH '{quoted}' AS {alias}{' (READ_ONLY)' if read_only else ''}")
                entry = self._files[key] = [alias, read_only, 0]
            elif entry[1] and not read_only:
                raise StoreError(f"{path} is open read-only in this process; close that store before writing to it")
            con = db.cursor()
            try:
                con.execute(f"USE {entry[0]}")
            except BaseException:
                con.close()
                raise
            entry[2] += 1
            return con, key

    def release(self, key: str, con: duckdb.DuckDBPyConnection, reset: tuple[str, ...] = ()) -> None:
        """Close ``con``; detach its file when it was the last user, then return the ``reset``
        settings to the baseline (``BASELINE_SETTINGS``, else DuckDB's default)."""
        con.close()
        with self._lock:
            assert self._db is not None
            entry = self._files[key]
            entry[2] -= 1
            try:
                if entry[2] == 0:
                    del self._files[key]
                    self._db.execute(f"DETACH {entry[0]}")
            finally:
                for setting in reset:
                    if setting in BASELINE_SETTINGS:
                        self._db.execute(f"SET {setting} = {BASELINE_SETTINGS[setting]}")
                    else:
                        self._db.execute(f"RESET {setting}")


_ATTACHED = _Attachments()


def hold_single_thread(hold: bool = True) -> None:
    """While a model runs in this process, keep DuckDB on one thread: take the hold when the
    model starts (``hold=True``), give it back when it stops (``hold=False``); holds count.

    Per-store ``settings={"threads": 1}`` would do the same for one store, but each reset
    makes DuckDB start a worker thread and the next store stop it again: a few threads per
    extraction's commits. Without that churn an extraction of 20,000 images took half the
    extra page faults (55,000 against 115,000, the plain loop's 44,000) and its ratio to a
    plain loop fell from 1.086 to 1.060 (BENCHMARKS.md).
    """
    _ATTACHED.hold_single_thread(hold)


def _is_lock_error(err: Exception) -> bool:
    msg = str(err).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set" in msg)


class StoreBase:
    """The connection every part of the store shares (see ``Store`` for the parameters)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        lock_timeout: float | None = None,
        settings: dict[str, int | str] | None = None,
    ) -> None:
        self.path = resolve_db_path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise StoreError(
                f"no mldbg database at {self.path}; run `mldbg extract` first, or point to one with --db / ${DB_ENV}"
            )
        if not self.path.parent.exists():
            raise StoreError(f"directory {self.path.parent} for database {self.path} does not exist; create it first")
        timeout = _lock_timeout() if lock_timeout is None else lock_timeout
        self._key: str | None = None
        self._reset: tuple[str, ...] = ()
        self.con = self._connect(read_only, timeout)
        try:
            # DuckDB settings are per process: they also hold for the checkpoint at close.
            for name, value in (settings or {}).items():
                self._reset += (name,)
                self.con.execute(f"SET {name} = {value!r}" if isinstance(value, str) else f"SET {name} = {int(value)}")
            self._check_schema(timeout)
        except BaseException:
            self.close()
            raise

    # -- connection -----------------------------------------------------------------------
    def _connect(self, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                con, self._key = _ATTACHED.open(self.path, read_only)
                return con
            except duckdb.IOException as err:
                if _is_lock_error(err):
                    if time.monotonic() >= deadline:
                        holder = re.search(r"PID (\d+)", str(err))
                        who = f" (process {holder.group(1)})" if holder else ""
                        raise StoreError(
                            f"database {self.path} is busy: another mldbg process{who} is writing to it; "
                            f"wait for it to finish, or raise {LOCK_TIMEOUT_ENV} (now {timeout:g} s)"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise StoreError(
                    f"{self.path} is not a readable DuckDB database ({_first_line(err)}); "
                    "point --db to an mldbg database or remove the file"
                ) from None
            except duckdb.Error as err:
                raise StoreError(
                    f"{self.path} is not a readable DuckDB database ({_first_line(err)}); "
                    "point --db to an mldbg database or remove the file"
                ) from None

    def _schema_version(self) -> int:
        try:  # one query where the file is an mldbg database, as it nearly always is
            version = self._one("SELECT value FROM meta WHERE key = 'schema_version'")
        except (duckdb.CatalogException, duckdb.BinderException):
            if self._one("SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database()"):
                raise StoreError(
                    f"{self.path} is a DuckDB file but not an mldbg database (no meta table); "
                    "point --db to another file"
                ) from None
            return 0
        return int(version) if version is not None else 0

    def _check_schema(self, timeout: float) -> None:
        version = self._schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this mldbg understands "
                f"({SCHEMA_VERSION}); upgrade mldbg (pip install -U mldbg)"
            )
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            # Migrate through a short writable connection, then continue read-only.
            self.close()
            writer = StoreBase(self.path, read_only=False, lock_timeout=timeout)
            writer.close()
            self.con = self._connect(True, timeout)
            return
        self._migrate(version)

    def _migrate(self, version: int) -> None:
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            for step in MIGRATIONS[version:]:
                step(self.con)
            self.con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        if version:
            log.info("migrated %s from schema %d to %d", self.path, version, SCHEMA_VERSION)

    def close(self) -> None:
        """Close this store's connection; the file is detached (and unlocked) when no other store
        of this process has it open. Safe to call twice."""
        key, self._key = self._key, None
        if key is not None:
            _ATTACHED.release(key, self.con, self._reset)

    def __del__(self) -> None:  # a store dropped without close() still releases the file
        with suppress(Exception):  # nothing to report to at garbage collection
            self.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All statements inside commit together or not at all."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _insert(self, table: str, frame: pl.DataFrame | None, run: str) -> None:
        if frame is None or frame.height == 0:
            return
        self._insert_frame(table, frame.with_columns(pl.lit(run).alias("run")))

    def _insert_features(self, table: str, keys: pl.DataFrame, features: Any, run: str) -> None:
        """Insert ``features [n, d]`` (float32) keyed by the columns of ``keys`` into ``{table}_{d}``
        (``FLOAT[d]``; created on first use: one table per feature width)."""
        dim = int(features.shape[1])
        cols = "".join(f"{c} {'INTEGER' if keys[c].dtype.is_integer() else 'VARCHAR'} NOT NULL, " for c in keys.columns)
        self.con.execute(
            f"CREATE TABLE IF NOT EXISTS {table}_{dim} (run VARCHAR NOT NULL, {cols}feature FLOAT[{dim}] NOT NULL)"
        )
        frame = keys.with_columns(pl.Series("feature", features, dtype=pl.Array(pl.Float32, dim)))
        self._insert(f"{table}_{dim}", frame, run)

    def _insert_frame(self, table: str, frame: pl.DataFrame) -> None:
        """Insert a frame's columns by name, through Arrow (never row by row)."""
        if frame.height == 0:
            return
        self.con.register("_mldbg_batch", frame.to_arrow())
        try:
            self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _mldbg_batch")
        finally:
            self.con.unregister("_mldbg_batch")

    def _one(self, sql: str, params: list[Any] | None = None) -> Any:
        """The first value of the first row (None when no row); fetches the whole result."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
