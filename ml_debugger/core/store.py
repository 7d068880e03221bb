"""The DuckDB store: the only module that knows the schema.

One file (default ``./mldbg.duckdb``) holds every run. Rows are keyed by ``(run, sample_id)``
so that stores written by separate workers can later be merged without id collisions. Data
moves DuckDB ⇄ Polars through Arrow; nothing is inserted row by row.

``(run, sample_id)`` is unique by construction (an extraction commits whole batches and skips
ids already stored), not by a PRIMARY KEY: DuckDB rewrites an ART index at every checkpoint,
which would make each commit of a long extraction cost more than the last.

Tables
------
meta      key/value pairs, among them ``schema_version``
runs      one row per extraction: model, dataset, classes, preprocessing, status
samples   (run, sample_id, path, label)            label is the class index or NULL
outputs   (run, sample_id, pred, confidence, margin, entropy, energy, probs, feature_norm,
           stability, flip_rate, perturbed_confidence, flip_classes)
features_{d}  (run, sample_id, feature FLOAT[d])   one table per feature width d
skipped   (run, sample_id, path, reason)            inputs that could not be decoded
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from ml_debugger.errors import NotFoundError, StoreError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_DB = "mldbg.duckdb"
DB_ENV = "MLDBG_DB"
LOCK_TIMEOUT_ENV = "MLDBG_LOCK_TIMEOUT"
# Another process (an extraction flushing a batch) may hold the file for a moment; wait this
# long for it before giving up with a clear message.
DEFAULT_LOCK_TIMEOUT_S = 30.0


def _m1_base(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS runs (
            name VARCHAR PRIMARY KEY,
            task VARCHAR NOT NULL,
            model_name VARCHAR NOT NULL,
            model_version VARCHAR NOT NULL,
            model_path VARCHAR,
            model_format VARCHAR,
            model_sha256 VARCHAR,
            dataset_path VARCHAR NOT NULL,
            dataset_format VARCHAR NOT NULL,
            labelled BOOLEAN NOT NULL,
            classes VARCHAR[] NOT NULL,
            feature_layer VARCHAR,
            feature_dim INTEGER,
            stability_k INTEGER NOT NULL DEFAULT 0,
            settings VARCHAR NOT NULL,
            fingerprint VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            n_expected INTEGER,
            created TIMESTAMP NOT NULL,
            finished TIMESTAMP,
            mldbg_version VARCHAR
        );
        CREATE TABLE IF NOT EXISTS samples (
            run VARCHAR NOT NULL,
            sample_id VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            label INTEGER
        );
        CREATE TABLE IF NOT EXISTS outputs (
            run VARCHAR NOT NULL,
            sample_id VARCHAR NOT NULL,
            pred INTEGER NOT NULL,
            confidence FLOAT NOT NULL,
            margin FLOAT NOT NULL,
            entropy FLOAT NOT NULL,
            energy FLOAT NOT NULL,
            probs FLOAT[] NOT NULL,
            feature_norm FLOAT,
            stability FLOAT,
            flip_rate FLOAT,
            perturbed_confidence FLOAT,
            flip_classes INTEGER[]
        );
        CREATE TABLE IF NOT EXISTS skipped (
            run VARCHAR NOT NULL,
            sample_id VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            reason VARCHAR NOT NULL
        );
        """
    )


def _m2_checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    # Growth path (training dynamics): a run records which checkpoint of the model produced it.
    con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS checkpoint VARCHAR")


# MIGRATIONS[i] brings a file from schema i to schema i + 1. Append, never edit.
MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [_m1_base, _m2_checkpoint]
SCHEMA_VERSION = len(MIGRATIONS)


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


def _is_lock_error(err: Exception) -> bool:
    msg = str(err).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set" in msg)


@dataclass(frozen=True)
class RunInfo:
    """One run as stored in the ``runs`` table."""

    name: str
    task: str
    model_name: str
    model_version: str
    model_path: str
    model_format: str
    model_sha256: str
    dataset_path: str
    dataset_format: str
    labelled: bool
    classes: list[str]
    feature_layer: str | None
    feature_dim: int | None
    stability_k: int
    settings: dict[str, Any]
    fingerprint: str
    status: str = "running"
    n_expected: int | None = None
    created: datetime = field(default_factory=datetime.now)
    finished: datetime | None = None
    mldbg_version: str | None = None
    checkpoint: str | None = None


class Store:
    """An open mldbg database.

    Parameters
    ----------
    path
        The DuckDB file; created (with the current schema) unless ``read_only``.
    read_only
        Open for reading; fails with a clear message when the file does not exist.
    lock_timeout
        Seconds to keep retrying while another process holds the file.

    Examples
    --------
    >>> with Store("mldbg.duckdb", read_only=True) as store:  # doctest: +SKIP
    ...     store.list_runs()
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        lock_timeout: float | None = None,
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
        self.con = self._connect(read_only, timeout)
        try:
            self._check_schema(timeout)
        except BaseException:
            self.con.close()
            raise

    # -- connection -----------------------------------------------------------------------
    def _connect(self, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
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
        has_meta = self._one("SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'")
        if not has_meta:
            if self._one("SELECT count(*) FROM information_schema.tables"):
                raise StoreError(
                    f"{self.path} is a DuckDB file but not an mldbg database (no meta table); "
                    "point --db to another file"
                )
            return 0
        version = self._one("SELECT value FROM meta WHERE key = 'schema_version'")
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
            self.con.close()
            writer = Store(self.path, read_only=False, lock_timeout=timeout)
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
        self.con.close()

    def __enter__(self) -> Store:
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
        arrow = frame.with_columns(pl.lit(run).alias("run")).to_arrow()
        self.con.register("_mldbg_batch", arrow)
        try:
            self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _mldbg_batch")
        finally:
            self.con.unregister("_mldbg_batch")

    # -- runs -----------------------------------------------------------------------------
    def create_run(self, run: RunInfo) -> None:
        """Insert a new run row (status ``running``)."""
        with self.transaction() as con:
            con.execute(
                """INSERT INTO runs (name, task, model_name, model_version, model_path, model_format,
                       model_sha256, dataset_path, dataset_format, labelled, classes, feature_layer,
                       feature_dim, stability_k, settings, fingerprint, status, n_expected, created,
                       finished, mldbg_version, checkpoint)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    run.name, run.task, run.model_name, run.model_version, run.model_path,
                    run.model_format, run.model_sha256, run.dataset_path, run.dataset_format,
                    run.labelled, run.classes, run.feature_layer, run.feature_dim, run.stability_k,
                    json.dumps(run.settings, sort_keys=True), run.fingerprint, run.status,
                    run.n_expected, run.created, run.finished, run.mldbg_version, run.checkpoint,
                ],
            )  # fmt: skip

    def get_run(self, name: str) -> RunInfo | None:
        rel = self.con.sql("SELECT * FROM runs WHERE name = $name", params={"name": name})
        rows = rel.pl().to_dicts()
        if not rows:
            return None
        row = rows[0]
        row["settings"] = json.loads(row["settings"])
        row["classes"] = list(row["classes"])
        return RunInfo(**row)

    def require_run(self, name: str) -> RunInfo:
        """The run called ``name``, or a NotFoundError listing the runs there are."""
        run = self.get_run(name)
        if run is None:
            names = [r[0] for r in self.con.execute("SELECT name FROM runs ORDER BY created").fetchall()]
            choices = ", ".join(names) if names else "none yet; create one with `mldbg extract`"
            raise NotFoundError(f"no run named {name!r} in {self.path}; runs: {choices}")
        return run

    def update_run(self, name: str, **values: Any) -> None:
        cols = ", ".join(f"{k} = ${k}" for k in values)
        self.con.execute(f"UPDATE runs SET {cols} WHERE name = $name", {**values, "name": name})

    def drop_run(self, name: str) -> None:
        """Delete a run and everything stored for it, in one transaction."""
        run = self.require_run(name)
        with self.transaction() as con:
            for table in ("outputs", "samples", "skipped", *self._feature_tables()):
                con.execute(f"DELETE FROM {table} WHERE run = ?", [run.name])
            con.execute("DELETE FROM runs WHERE name = ?", [run.name])

    def list_runs(self) -> pl.DataFrame:
        """One row per run: name, task, model, version, dataset, samples, labelled, skipped, status, created."""
        return self.con.sql(
            """
            SELECT r.name, r.task, r.model_name, r.model_version, r.dataset_path AS dataset,
                   coalesce(s.n, 0)::BIGINT AS samples, r.labelled, coalesce(k.n, 0)::BIGINT AS skipped,
                   r.status, r.created
            FROM runs r
            LEFT JOIN (SELECT run, count(*) AS n FROM samples GROUP BY run) s ON s.run = r.name
            LEFT JOIN (SELECT run, count(*) AS n FROM skipped GROUP BY run) k ON k.run = r.name
            ORDER BY r.created, r.name
            """
        ).pl()

    # -- samples and outputs ----------------------------------------------------------------
    def _feature_tables(self) -> list[str]:
        rows = self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'features_%'"
        ).fetchall()
        return [r[0] for r in rows]

    def done_sample_ids(self, run: str) -> set[str]:
        """Sample ids already stored for ``run`` (outputs or skipped): what a resume skips."""
        frame = self.con.sql(
            "SELECT sample_id FROM samples WHERE run = $run UNION ALL SELECT sample_id FROM skipped WHERE run = $run",
            params={"run": run},
        ).pl()
        return set(frame["sample_id"].to_list())

    def write_batch(
        self,
        run: str,
        *,
        samples: pl.DataFrame | None = None,
        outputs: pl.DataFrame | None = None,
        features: np.ndarray | None = None,
        skipped: pl.DataFrame | None = None,
    ) -> None:
        """Store one batch in one transaction: all of it or none of it.

        ``samples`` has sample_id, path, label; ``outputs`` the columns of the ``outputs``
        table except run; ``features`` is ``[len(samples), d]`` float32 in the same row order;
        ``skipped`` has sample_id, path, reason.
        """
        with self.transaction() as con:
            if samples is not None and features is not None and len(features):
                dim = int(features.shape[1])
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS features_{dim} "
                    f"(run VARCHAR NOT NULL, sample_id VARCHAR NOT NULL, feature FLOAT[{dim}] NOT NULL)"
                )
                feat_frame = pl.DataFrame(
                    {
                        "sample_id": samples["sample_id"],
                        "feature": pl.Series(features, dtype=pl.Array(pl.Float32, dim)),
                    }
                )
                self._insert(f"features_{dim}", feat_frame, run)
            self._insert("samples", samples, run)
            self._insert("outputs", outputs, run)
            self._insert("skipped", skipped, run)

    def read_outputs(self, run: str) -> pl.DataFrame:
        """Samples joined with their outputs, ordered by sample_id."""
        return self.con.sql(
            """SELECT s.sample_id, s.path, s.label, o.* EXCLUDE (run, sample_id)
               FROM samples s JOIN outputs o ON o.run = s.run AND o.sample_id = s.sample_id
               WHERE s.run = $run ORDER BY s.sample_id""",
            params={"run": run},
        ).pl()

    def read_features(self, run: str) -> tuple[list[str], np.ndarray]:
        """(sample_ids, features ``[n, d]`` float32) of ``run``, ordered by sample_id."""
        import numpy as np

        info = self.require_run(run)
        if not info.feature_dim:
            return [], np.zeros((0, 0), dtype=np.float32)
        frame = self.con.sql(
            f"SELECT sample_id, feature FROM features_{int(info.feature_dim)} WHERE run = $run ORDER BY sample_id",
            params={"run": run},
        ).pl()
        return frame["sample_id"].to_list(), frame["feature"].to_numpy().astype(np.float32, copy=False)

    def read_skipped(self, run: str) -> pl.DataFrame:
        return self.con.sql(
            "SELECT sample_id, path, reason FROM skipped WHERE run = $run ORDER BY sample_id",
            params={"run": run},
        ).pl()

    def accuracy(self, run: str) -> float | None:
        """Share of labelled samples whose predicted class equals the label (None if unlabelled)."""
        value = self._one(
            """SELECT avg(CASE WHEN o.pred = s.label THEN 1.0 ELSE 0.0 END)
               FROM samples s JOIN outputs o USING (run, sample_id)
               WHERE s.run = ? AND s.label IS NOT NULL""",
            [run],
        )
        return None if value is None else float(value)

    def class_table(self, run: str) -> pl.DataFrame:
        """Per class index: labelled count, predicted count, accuracy on its labelled samples."""
        return self.con.sql(
            """WITH j AS (SELECT s.label, o.pred FROM samples s JOIN outputs o USING (run, sample_id)
                          WHERE s.run = $run),
                    lab AS (SELECT label AS cls, count(*) AS labelled,
                                   avg(CASE WHEN pred = label THEN 1.0 ELSE 0.0 END) AS accuracy
                            FROM j WHERE label IS NOT NULL GROUP BY label),
                    prd AS (SELECT pred AS cls, count(*) AS predicted FROM j GROUP BY pred)
               SELECT coalesce(lab.cls, prd.cls) AS cls, coalesce(labelled, 0)::BIGINT AS labelled,
                      coalesce(predicted, 0)::BIGINT AS predicted, accuracy
               FROM lab FULL OUTER JOIN prd ON lab.cls = prd.cls ORDER BY cls""",
            params={"run": run},
        ).pl()

    def stability_summary(self, run: str) -> dict[str, float | None]:
        """Mean stability, mean flip rate and share of samples with any flip (None without --stability)."""
        rows = self.con.execute(
            """SELECT avg(stability), avg(flip_rate), avg(CASE WHEN flip_rate > 0 THEN 1.0 ELSE 0.0 END)
               FROM outputs WHERE run = ? AND stability IS NOT NULL""",
            [run],
        ).fetchall()
        row = rows[0] if rows else None
        keys = ("mean_stability", "mean_flip_rate", "share_flipped")
        return {
            k: (None if row is None or v is None else float(v)) for k, v in zip(keys, row or (None,) * 3, strict=True)
        }

    def count(self, table: str, run: str) -> int:
        return int(self._one(f"SELECT count(*) FROM {table} WHERE run = ?", [run]) or 0)

    def _one(self, sql: str, params: list[Any] | None = None) -> Any:
        """The first value of the first row (None when no row); fetches the whole result."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
