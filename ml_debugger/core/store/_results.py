"""Results (fitted evaluations) and scores: what `mldbg evaluate` and `mldbg score` write.

A result is one row of plain values and JSON (never pickle) plus named float arrays in
``result_arrays``; scores are cached per (result, run) and replaced as a whole when
recomputed, in one transaction, so re-scoring is idempotent.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from ml_debugger.core.store._base import StoreBase
from ml_debugger.errors import NotFoundError

if TYPE_CHECKING:
    import numpy as np

_JSON_FIELDS = ("config", "thresholds", "model", "metrics")


@dataclass(frozen=True)
class ResultInfo:
    """One fitted evaluation as stored in the ``results`` table."""

    name: str
    task: str
    model_name: str
    model_version: str
    method: str
    eval_run: str
    reference_run: str
    classes: list[str]
    feature_dim: int | None
    stability: bool
    config: dict[str, Any]
    thresholds: dict[str, Any]
    model: dict[str, Any]
    metrics: dict[str, Any]
    created: datetime = field(default_factory=datetime.now)
    mldbg_version: str | None = None


class ResultsMixin(StoreBase):
    """Reading and writing results and scores."""

    def create_result(
        self, info: ResultInfo, arrays: dict[str, np.ndarray], eval_scores: pl.DataFrame, *, table: str = "scores"
    ) -> None:
        """Store a result, its arrays and its (out-of-fold) scores of the eval run, all or nothing
        (``table`` = ``box_scores`` for detection results)."""
        # Key order is kept (thresholds read in rule order); JSON of numpy scalars is refused.
        row = {k: (json.dumps(v) if k in _JSON_FIELDS else v) for k, v in info.__dict__.items()}
        cols = ", ".join(row)
        with self.transaction() as con:
            con.execute(f"INSERT INTO results ({cols}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
            if arrays:
                frame = pl.DataFrame(
                    {
                        "result": [info.name] * len(arrays),
                        "name": list(arrays),
                        "data": [a.astype("float64").ravel().tolist() for a in arrays.values()],
                    },
                    schema={"result": pl.String, "name": pl.String, "data": pl.List(pl.Float64)},
                )
                self._insert_frame("result_arrays", frame)
            self._replace_scores(info.name, info.eval_run, eval_scores, out_of_fold=True, table=table)

    def get_result(self, name: str) -> ResultInfo | None:
        rows = self.con.sql("SELECT * FROM results WHERE name = $name", params={"name": name}).pl().to_dicts()
        if not rows:
            return None
        row = rows[0]
        for k in _JSON_FIELDS:
            row[k] = json.loads(row[k])
        row["classes"] = list(row["classes"])
        return ResultInfo(**row)

    def require_result(self, name: str) -> ResultInfo:
        """The result called ``name``, or a NotFoundError naming the closest ones."""
        result = self.get_result(name)
        if result is None:
            names = self.result_names()
            if not names:
                raise NotFoundError(f"no result named {name!r} in {self.path}; none yet: run `mldbg evaluate RUN`")
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5) or names[-3:]
            raise NotFoundError(f"no result named {name!r}; did you mean: {', '.join(close)}? (see `mldbg results`)")
        return result

    def result_names(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT name FROM results ORDER BY created, name").fetchall()]

    def unique_result_name(self, base: str) -> str:
        """``base``, or ``base_2``, ``base_3``… when results of that name exist already."""
        taken = set(self.result_names())
        if base not in taken:
            return base
        n = 2
        while f"{base}_{n}" in taken:
            n += 1
        return f"{base}_{n}"

    def list_results(self) -> pl.DataFrame:
        """One row per result, newest last, with the JSON columns as text."""
        return self.con.sql(
            """SELECT name, task, model_name, model_version, method, eval_run, reference_run, metrics, created
               FROM results ORDER BY created, name"""
        ).pl()

    def matching_results(self, task: str, model_name: str, model_version: str) -> list[ResultInfo]:
        """Results of this task and model version, newest first."""
        names = self.con.execute(
            """SELECT name FROM results WHERE task = ? AND model_name = ? AND model_version = ?
               ORDER BY created DESC, name DESC""",
            [task, model_name, model_version],
        ).fetchall()
        return [self.require_result(n[0]) for n in names]

    def result_arrays(self, name: str) -> dict[str, np.ndarray]:
        import numpy as np

        frame = self.con.sql("SELECT name, data FROM result_arrays WHERE result = $r", params={"r": name}).pl()
        return {n: np.asarray(d, dtype=np.float64) for n, d in zip(frame["name"], frame["data"].to_list(), strict=True)}

    def results_using_run(self, run: str) -> list[str]:
        rows = self.con.execute(
            "SELECT name FROM results WHERE eval_run = ? OR reference_run = ? ORDER BY name", [run, run]
        ).fetchall()
        return [r[0] for r in rows]

    def drop_result(self, name: str) -> None:
        """Delete a result with its arrays and every score computed with it."""
        self.require_result(name)
        with self.transaction() as con:
            for table in ("scores", "box_scores", "scored", "result_arrays"):
                con.execute(f"DELETE FROM {table} WHERE result = ?", [name])
            con.execute("DELETE FROM results WHERE name = ?", [name])

    # -- scores -----------------------------------------------------------------------------
    def _replace_scores(
        self, result: str, run: str, frame: pl.DataFrame, *, out_of_fold: bool, table: str = "scores"
    ) -> None:
        assert table in ("scores", "box_scores")
        self.con.execute(f"DELETE FROM {table} WHERE result = ? AND run = ?", [result, run])
        self.con.execute("DELETE FROM scored WHERE result = ? AND run = ?", [result, run])
        self._insert_frame(table, frame.with_columns(pl.lit(result).alias("result"), pl.lit(run).alias("run")))
        self.con.execute(
            "INSERT INTO scored VALUES (?, ?, ?, ?, ?)", [result, run, frame.height, out_of_fold, datetime.now()]
        )

    def write_scores(self, result: str, run: str, frame: pl.DataFrame, *, table: str = "scores") -> None:
        """Replace the scores of ``run`` under ``result`` in one transaction (``box_scores`` for
        detection results)."""
        with self.transaction():
            self._replace_scores(result, run, frame, out_of_fold=False, table=table)

    def scored_info(self, result: str, run: str) -> dict[str, Any] | None:
        """``{n, out_of_fold, scored}`` when scores of (result, run) are cached, else None."""
        rows = self.con.sql(
            "SELECT n, out_of_fold, scored FROM scored WHERE result = $r AND run = $run",
            params={"r": result, "run": run},
        ).pl()
        return rows.to_dicts()[0] if rows.height else None

    def scored_pairs(self) -> pl.DataFrame:
        """Every cached (result, run) pair, newest first."""
        return self.con.sql("SELECT result, run, n, out_of_fold, scored FROM scored ORDER BY scored DESC").pl()

    def read_zones(self, result: str, run: str) -> pl.DataFrame:
        """Just (zone, is_error) of every scored sample: what zone tables need, cheap at 1M rows."""
        return self.con.sql(
            """SELECT c.zone, CASE WHEN s.label IS NULL THEN NULL ELSE o.pred <> s.label END AS is_error
               FROM scores c
               JOIN outputs o ON o.run = c.run AND o.sample_id = c.sample_id
               JOIN samples s ON s.run = c.run AND s.sample_id = c.sample_id
               WHERE c.result = $result AND c.run = $run""",
            params={"result": result, "run": run},
        ).pl()

    def scan_scores(
        self, result: str, run: str, zones: list[str] | None = None, selection: str | None = None
    ) -> pl.LazyFrame:
        """A lazy frame of what queries filter on (no probability lists), for ``run`` under ``result``.

        ``zones`` (validated names, bound as a parameter) are filtered inside DuckDB, before the
        joins; Polars filters on the lazy frame are pushed down into DuckDB's scan where they
        can be. With ``selection``, only its samples, with their ``rank``. Collect it while the
        store is open.
        """
        zone_filter = "AND list_contains($zones, c.zone)" if zones else ""
        params: dict[str, Any] = {"result": result, "run": run}
        if zones:
            params["zones"] = list(zones)
        picked, rank = "", ""
        if selection is not None:
            picked = "JOIN selection_items i ON i.sample_id = c.sample_id AND i.selection = $selection"
            rank = "i.rank, "
            params["selection"] = selection
        rel = self.con.sql(
            f"""SELECT {rank}s.sample_id, s.path, s.label, o.pred, o.confidence, o.margin, o.entropy, o.energy,
                       o.stability, o.flip_rate, o.perturbed_confidence, o.feature_norm,
                       c.error_proba, c.ood_score, c.zone, c.error_code, c.knn_disagree, c.trust_score,
                       c.knn_distance, c.knn_vote
                FROM scores c
                JOIN samples s ON s.run = c.run AND s.sample_id = c.sample_id
                JOIN outputs o ON o.run = c.run AND o.sample_id = c.sample_id
                {picked}
                WHERE c.result = $result AND c.run = $run {zone_filter}""",
            params=params,
        )
        return rel.pl(lazy=True)

    def read_scores(self, result: str, run: str) -> pl.DataFrame:
        """Scores of ``run`` under ``result`` joined with the samples and outputs, by sample_id."""
        return self.con.sql(
            """SELECT s.sample_id, s.path, s.label, o.* EXCLUDE (run, sample_id),
                      c.* EXCLUDE (result, run, sample_id)
               FROM samples s
               JOIN outputs o ON o.run = s.run AND o.sample_id = s.sample_id
               JOIN scores c ON c.run = s.run AND c.sample_id = s.sample_id AND c.result = $result
               WHERE s.run = $run ORDER BY s.sample_id""",
            params={"result": result, "run": run},
        ).pl()
