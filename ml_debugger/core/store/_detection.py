"""Detection runs: image sizes, kept boxes with their feature vectors, and ground-truth boxes.

A detection run still has one ``samples`` row per image (so resuming and skipped files work as
for classification); its boxes live in ``boxes`` and ``box_features_{d}``, keyed by
``(run, sample_id, box)``, and its ground truth in ``gt_boxes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ml_debugger.core.store._base import StoreBase

if TYPE_CHECKING:
    import numpy as np


class DetectionMixin(StoreBase):
    def write_gt_boxes(self, run: str, boxes: pl.DataFrame) -> None:
        """Replace the ground truth of ``run`` (columns of ``gt_boxes`` except run), in one transaction."""
        with self.transaction() as con:
            con.execute("DELETE FROM gt_boxes WHERE run = ?", [run])
            self._insert("gt_boxes", boxes, run)

    def write_detection_batch(
        self,
        run: str,
        *,
        samples: pl.DataFrame | None = None,
        images: pl.DataFrame | None = None,
        boxes: pl.DataFrame | None = None,
        features: np.ndarray | None = None,
        skipped: pl.DataFrame | None = None,
    ) -> None:
        """Store one batch of images in one transaction: samples, sizes, kept boxes and their
        features (``[len(boxes), d]`` float32 in the same row order), skipped files."""
        with self.transaction():
            if boxes is not None and features is not None and len(features):
                self._insert_features("box_features", boxes.select("sample_id", "box"), features, run)
            self._insert("samples", samples, run)
            self._insert("images", images, run)
            self._insert("boxes", boxes, run)
            self._insert("skipped", skipped, run)

    def read_boxes(self, run: str) -> pl.DataFrame:
        """Every kept box of ``run`` with its image's size, ordered by (sample_id, box)."""
        return self.con.sql(
            """SELECT b.* EXCLUDE (run), i.width, i.height FROM boxes b
               JOIN images i ON i.run = b.run AND i.sample_id = b.sample_id
               WHERE b.run = $run ORDER BY b.sample_id, b.box""",
            params={"run": run},
        ).pl()

    def detection_class_table(self, run: str) -> pl.DataFrame:
        """Per class index: kept boxes predicted as it and ground-truth boxes of it."""
        return self.con.sql(
            """WITH p AS (SELECT label AS cls, count(*) AS predicted FROM boxes WHERE run = $run GROUP BY ALL),
                    g AS (SELECT cls, count(*) AS ground_truth FROM gt_boxes WHERE run = $run GROUP BY ALL)
               SELECT coalesce(p.cls, g.cls) AS cls, coalesce(predicted, 0) AS predicted,
                      coalesce(ground_truth, 0) AS ground_truth
               FROM p FULL JOIN g ON p.cls = g.cls ORDER BY 1""",
            params={"run": run},
        ).pl()

    def read_box_scores(self, result: str, run: str) -> pl.DataFrame:
        """Box scores joined with the boxes (and image sizes), ordered by (sample_id, box)."""
        return self.con.sql(
            """SELECT b.* EXCLUDE (run), i.width, i.height, c.* EXCLUDE (result, run, sample_id, box)
               FROM box_scores c
               JOIN boxes b ON b.run = c.run AND b.sample_id = c.sample_id AND b.box = c.box
               JOIN images i ON i.run = c.run AND i.sample_id = c.sample_id
               WHERE c.result = $result AND c.run = $run ORDER BY b.sample_id, b.box""",
            params={"result": result, "run": run},
        ).pl()

    def read_gt_boxes(self, run: str) -> pl.DataFrame:
        return self.con.sql(
            "SELECT * EXCLUDE (run) FROM gt_boxes WHERE run = $run ORDER BY sample_id, box", params={"run": run}
        ).pl()

    def read_images(self, run: str) -> pl.DataFrame:
        return self.con.sql(
            "SELECT * EXCLUDE (run) FROM images WHERE run = $run ORDER BY sample_id", params={"run": run}
        ).pl()

    def box_features(self, run: str, dim: int) -> np.ndarray:
        """``[boxes, dim]`` float32 in ``read_boxes`` order."""
        import numpy as np

        frame = self.con.sql(
            f"SELECT feature FROM box_features_{int(dim)} WHERE run = $run ORDER BY sample_id, box",
            params={"run": run},
        ).pl()
        if frame.height == 0:
            return np.zeros((0, dim), dtype=np.float32)
        return frame["feature"].to_numpy().astype(np.float32, copy=False).reshape(-1, dim)
