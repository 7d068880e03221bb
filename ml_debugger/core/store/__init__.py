"""The DuckDB store: the only package that knows the schema.

One file (default ``./mldbg.duckdb``) holds every run and result. Rows are keyed by
``(run, sample_id)`` so that stores written by separate workers can later be merged without
id collisions. Data moves DuckDB ⇄ Polars through Arrow; nothing is inserted row by row.
The tables are listed in ``_schema.py``; runs and results each have their own module.
"""

from __future__ import annotations

from ml_debugger.core.store._base import DB_ENV, DEFAULT_DB, hold_single_thread, resolve_db_path
from ml_debugger.core.store._detection import DetectionMixin
from ml_debugger.core.store._results import ResultInfo, ResultsMixin
from ml_debugger.core.store._runs import RunInfo, RunsMixin
from ml_debugger.core.store._schema import MIGRATIONS, SCHEMA_VERSION
from ml_debugger.core.store._selections import SelectionsMixin
from ml_debugger.errors import UsageError

__all__ = [
    "DB_ENV",
    "DEFAULT_DB",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ResultInfo",
    "RunInfo",
    "Store",
    "hold_single_thread",
    "resolve_db_path",
]


class Store(RunsMixin, ResultsMixin, SelectionsMixin, DetectionMixin):
    """An open mldbg database.

    Parameters
    ----------
    path
        The DuckDB file; created (with the current schema) unless ``read_only``.
    read_only
        Open for reading; fails with a clear message when the file does not exist.
    lock_timeout
        Seconds to keep retrying while another process holds the file.
    settings
        DuckDB settings while this store is open (e.g. ``{"max_vacuum_tasks": 100}``), reset when
        it closes. DuckDB's settings hold for the whole process. For the thread count while a
        model runs, use ``hold_single_thread`` instead (see there).

    Examples
    --------
    >>> with Store("mldbg.duckdb", read_only=True) as store:  # doctest: +SKIP
    ...     store.list_runs()
    """

    def drop_run(self, name: str) -> None:
        """Delete a run and everything stored for it; refused while a result depends on it."""
        users = self.results_using_run(name)
        if users:
            raise UsageError(
                f"run {name!r} is the evaluation or reference run of result(s) {', '.join(users)}; "
                "drop those first with `mldbg results drop NAME`"
            )
        super().drop_run(name)
