"""Runs, samples, outputs, features and skipped inputs: what `mldbg extract` writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from ml_debugger.core.store._base import StoreBase
from ml_debugger.errors import NotFoundError

if TYPE_CHECKING:
    import numpy as np

# DuckDB's memory limit while features stream out (see ``iter_outputs``).
STREAM_MEMORY_LIMIT = "512MB"


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


class RunsMixin(StoreBase):
    """Reading and writing runs."""

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
            con.execute(
                "DELETE FROM selection_items WHERE selection IN (SELECT id FROM selections WHERE run = ?)", [run.name]
            )
            con.execute("DELETE FROM selections WHERE run = ?", [run.name])
            for table in ("outputs", "samples", "skipped", "scores", "scored", *self._feature_tables()):
                con.execute(f"DELETE FROM {table} WHERE run = ?", [run.name])
            for table in ("images", "boxes", "gt_boxes", "box_scores", *self._feature_tables("box_features_")):
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
    def _feature_tables(self, prefix: str = "features_") -> list[str]:
        rows = self.con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database() AND starts_with(table_name, ?)",
            [prefix],
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
        with self.transaction():
            if samples is not None and features is not None and len(features):
                self._insert_features("features", samples.select("sample_id"), features, run)
            self._insert("samples", samples, run)
            self._insert("outputs", outputs, run)
            self._insert("skipped", skipped, run)

    def read_outputs(self, run: str, *, ordered: bool = True) -> pl.DataFrame:
        """Samples joined with their outputs, ordered by sample_id (unless ``ordered=False``)."""
        order = "ORDER BY s.sample_id" if ordered else ""
        return self.con.sql(
            f"""SELECT s.sample_id, s.path, s.label, o.* EXCLUDE (run, sample_id)
               FROM samples s JOIN outputs o ON o.run = s.run AND o.sample_id = s.sample_id
               WHERE s.run = $run {order}""",
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

    def iter_outputs(self, run: str, dim: int, *, batch_rows: int) -> Iterator[tuple[pl.DataFrame, np.ndarray]]:
        """Stream ``(outputs frame, features [rows, dim])`` of ``run`` in batches (no order).

        The outputs (small rows) are read at once; the features are streamed through a cursor
        and matched to them batch by batch, so no query ever holds every feature in memory.
        """
        import numpy as np

        outputs = self.read_outputs(run, ordered=False)
        # DuckDB keeps every block it reads cached up to its memory limit (80% of RAM): streaming
        # 2 GB of features would keep 2 GB resident. A small limit while streaming keeps it flat.
        limit = self._one("SELECT current_setting('memory_limit')")
        self.con.execute(f"SET memory_limit = '{STREAM_MEMORY_LIMIT}'")
        cur = self.con.cursor()
        try:
            cur.execute(f"USE {self._one('SELECT current_database()')}")
            rel = cur.sql(f"SELECT sample_id, feature FROM features_{int(dim)} WHERE run = $run", params={"run": run})
            with rel.to_arrow_reader(batch_size=batch_rows) as reader:
                for batch in reader:
                    feats = pl.DataFrame(pl.from_arrow(batch))
                    # Every column of an imported Arrow batch keeps the whole batch alive, so the
                    # frame takes its columns from `outputs` and the features are copied out.
                    order = feats.select("sample_id").with_row_index("_i")
                    frame = outputs.join(order, on="sample_id").sort("_i").drop("_i")
                    yield frame, np.array(feats["feature"].to_numpy(), dtype=np.float32)
        finally:
            cur.close()
            self.con.execute(f"SET memory_limit = '{limit}'")

    def features_of(self, run: str, dim: int, sample_ids: pl.Series) -> np.ndarray:
        """Features ``[len(sample_ids), dim]`` of just these samples, in their order."""
        import numpy as np

        wanted = pl.DataFrame({"sample_id": sample_ids}).with_row_index("_i").to_arrow()
        self.con.register("_mldbg_ids", wanted)
        try:
            frame = self.con.sql(
                f"""SELECT w._i, f.feature FROM _mldbg_ids w
                    JOIN features_{int(dim)} f ON f.sample_id = w.sample_id AND f.run = $run ORDER BY w._i""",
                params={"run": run},
            ).pl()
        finally:
            self.con.unregister("_mldbg_ids")
        return np.array(frame["feature"].to_numpy(), dtype=np.float32)

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
