"""Selections: saved query answers (ordered sample ids plus the strategy that chose them)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import polars as pl

from ml_debugger.core.store._base import StoreBase
from ml_debugger.errors import NotFoundError


class SelectionsMixin(StoreBase):
    """Reading and writing selections."""

    def create_selection(self, run: str, result: str, strategy: dict[str, Any], sample_ids: list[str]) -> str:
        """Store an ordered answer as ``sel-N`` (N one more than any before) in one transaction."""
        with self.transaction() as con:
            seq = int(self._one("SELECT coalesce(max(seq), 0) + 1 FROM selections"))
            sel = f"sel-{seq}"
            con.execute(
                "INSERT INTO selections VALUES (?, ?, ?, ?, ?, ?, ?)",
                [sel, seq, run, result, json.dumps(strategy), len(sample_ids), datetime.now()],
            )
            items = pl.DataFrame(
                {"selection": [sel] * len(sample_ids), "rank": list(range(1, len(sample_ids) + 1)),
                 "sample_id": sample_ids},
                schema={"selection": pl.String, "rank": pl.Int32, "sample_id": pl.String},
            )  # fmt: skip
            self._insert_frame("selection_items", items)
        return sel

    def list_selections(self, run: str | None = None) -> pl.DataFrame:
        where = "WHERE run = $run" if run else ""
        return self.con.sql(
            f"SELECT id, run, result, n, strategy, created FROM selections {where} ORDER BY seq",
            params={"run": run} if run else None,
        ).pl()

    def require_selection(self, sel: str | None = None) -> dict[str, Any]:
        """The selection ``sel`` (the newest when None), with its strategy parsed."""
        if sel is None:
            rows = self.con.sql("SELECT * FROM selections ORDER BY seq DESC LIMIT 1").pl().to_dicts()
            if not rows:
                raise NotFoundError(f"no selections in {self.path} yet; make one with `mldbg query`")
        else:
            rows = self.con.sql("SELECT * FROM selections WHERE id = $id", params={"id": sel}).pl().to_dicts()
            if not rows:
                ids = [r[0] for r in self.con.execute("SELECT id FROM selections ORDER BY seq").fetchall()]
                raise NotFoundError(f"no selection {sel!r}; selections: {', '.join(ids) or 'none yet'}")
        row = rows[0]
        row["strategy"] = json.loads(row["strategy"])
        return row

    def selection_items(self, sel: str) -> pl.DataFrame:
        """rank, sample_id of a selection, in order."""
        return self.con.sql(
            "SELECT rank, sample_id FROM selection_items WHERE selection = $s ORDER BY rank", params={"s": sel}
        ).pl()

    def selected_ids(self, run: str) -> pl.Series:
        """Every sample id of ``run`` already in a selection."""
        return self.con.sql(
            """SELECT DISTINCT i.sample_id FROM selection_items i JOIN selections s ON s.id = i.selection
               WHERE s.run = $run""",
            params={"run": run},
        ).pl()["sample_id"]

    def drop_selection(self, sel: str) -> None:
        self.require_selection(sel)
        with self.transaction() as con:
            con.execute("DELETE FROM selection_items WHERE selection = ?", [sel])
            con.execute("DELETE FROM selections WHERE id = ?", [sel])
