"""The schema: an append-only list of migrations. Only the store package knows these tables.

Tables
------
meta      key/value pairs, among them ``schema_version``
runs      one row per extraction: model, dataset, classes, preprocessing, status
samples   (run, sample_id, path, label)            label is the class index or NULL
outputs   (run, sample_id, pred, confidence, margin, entropy, energy, probs, feature_norm,
           stability, flip_rate, perturbed_confidence, flip_classes)
features_{d}  (run, sample_id, feature FLOAT[d])   one table per feature width d
skipped   (run, sample_id, path, reason)            inputs that could not be decoded
results   one row per fitted evaluation: identity, config, thresholds, fitted error model (JSON)
result_arrays (result, name, data DOUBLE[])        larger fitted arrays of a result
scores    (result, run, sample_id, error_proba, ood_score, zone, error_code, kNN signals)
scored    (result, run, n, out_of_fold, scored)     which (result, run) pairs are cached
selections       (id "sel-N", seq, run, result, strategy JSON, n, created)
selection_items  (selection, rank, sample_id)        the ordered answer of a query
images    (run, sample_id, width, height, n_boxes)  detection: each image's size and kept boxes
boxes     (run, sample_id, box, x1, y1, x2, y2, label, score, probs, entropy, margin,
           n_candidates, candidate_iou, max_iou_other)  detection: the boxes mldbg kept
box_features_{d} (run, sample_id, box, feature FLOAT[d])  one table per width, as features_{d}
gt_boxes  (run, sample_id, box, cls, x1, y1, x2, y2, crowd)  detection ground truth (pixels)
box_scores (result, run, sample_id, box, error_proba, det_error_proba, cls_error_proba, ood_score,
           zone, error_code, knn_error, knn_distance)  detection: per-box scores under a result

3D detection (``task = 'detection3d'``) shares these tables: ``images`` rows are frames (width and
height NULL, ``n_points`` the points left inside pc_range); ``boxes`` and ``gt_boxes`` also hold
the box ``x, y, z, dx, dy, dz, yaw`` (metres, radians; NULL for 2D) with x1..y2 its bird's-eye-view
axis-aligned extent, and ``boxes.n_points`` the frame's points inside each box.

``(run, sample_id)`` is unique by construction (an extraction commits whole batches and skips
ids already stored), not by a PRIMARY KEY: DuckDB rewrites an ART index at every checkpoint,
which would make each commit of a long extraction cost more than the last.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb


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


def _m3_results(con: duckdb.DuckDBPyConnection) -> None:
    # Evaluate: fitted results, their arrays, and per-(result, run) scores.
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS results (
            name VARCHAR PRIMARY KEY,
            task VARCHAR NOT NULL,
            model_name VARCHAR NOT NULL,
            model_version VARCHAR NOT NULL,
            method VARCHAR NOT NULL,
            eval_run VARCHAR NOT NULL,
            reference_run VARCHAR NOT NULL,
            classes VARCHAR[] NOT NULL,
            feature_dim INTEGER,
            stability BOOLEAN NOT NULL,
            config VARCHAR NOT NULL,
            thresholds VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            metrics VARCHAR NOT NULL,
            created TIMESTAMP NOT NULL,
            mldbg_version VARCHAR
        );
        CREATE TABLE IF NOT EXISTS result_arrays (
            result VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            data DOUBLE[] NOT NULL
        );
        CREATE TABLE IF NOT EXISTS scores (
            result VARCHAR NOT NULL,
            run VARCHAR NOT NULL,
            sample_id VARCHAR NOT NULL,
            error_proba FLOAT NOT NULL,
            ood_score FLOAT NOT NULL,
            zone VARCHAR NOT NULL,
            error_code VARCHAR,
            knn_disagree FLOAT,
            trust_score FLOAT,
            knn_distance FLOAT,
            knn_vote INTEGER
        );
        CREATE TABLE IF NOT EXISTS scored (
            result VARCHAR NOT NULL,
            run VARCHAR NOT NULL,
            n BIGINT NOT NULL,
            out_of_fold BOOLEAN NOT NULL,
            scored TIMESTAMP NOT NULL
        );
        """
    )


def _m4_selections(con: duckdb.DuckDBPyConnection) -> None:
    # Query: saved selections (labeling rounds) keep their strategy and their order.
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS selections (
            id VARCHAR PRIMARY KEY,
            seq INTEGER NOT NULL,
            run VARCHAR NOT NULL,
            result VARCHAR NOT NULL,
            strategy VARCHAR NOT NULL,
            n INTEGER NOT NULL,
            created TIMESTAMP NOT NULL
        );
        CREATE TABLE IF NOT EXISTS selection_items (
            selection VARCHAR NOT NULL,
            rank INTEGER NOT NULL,
            sample_id VARCHAR NOT NULL
        );
        """
    )


def _m5_detection(con: duckdb.DuckDBPyConnection) -> None:
    # 2D detection: per-image sizes, the kept boxes with their signals, and ground-truth boxes.
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS images (
            run VARCHAR NOT NULL,
            sample_id VARCHAR NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            n_boxes INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS boxes (
            run VARCHAR NOT NULL,
            sample_id VARCHAR NOT NULL,
            box INTEGER NOT NULL,
            x1 FLOAT NOT NULL,
            y1 FLOAT NOT NULL,
            x2 FLOAT NOT NULL,
            y2 FLOAT NOT NULL,
            label INTEGER NOT NULL,
            score FLOAT NOT NULL,
            probs FLOAT[] NOT NULL,
            entropy FLOAT NOT NULL,
            margin FLOAT NOT NULL,
            n_candidates INTEGER NOT NULL,
            candidate_iou FLOAT NOT NULL,
            max_iou_other FLOAT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS gt_boxes (
            run VARCHAR NOT NULL,
            sample_id VARCHAR NOT NULL,
            box INTEGER NOT NULL,
            cls INTEGER NOT NULL,
            x1 FLOAT NOT NULL,
            y1 FLOAT NOT NULL,
            x2 FLOAT NOT NULL,
            y2 FLOAT NOT NULL,
            crowd BOOLEAN NOT NULL
        );
        CREATE TABLE IF NOT EXISTS box_scores (
            result VARCHAR NOT NULL,
            run VARCHAR NOT NULL,
            sample_id VARCHAR NOT NULL,
            box INTEGER NOT NULL,
            error_proba FLOAT NOT NULL,
            det_error_proba FLOAT NOT NULL,
            cls_error_proba FLOAT NOT NULL,
            ood_score FLOAT NOT NULL,
            zone VARCHAR NOT NULL,
            error_code VARCHAR,
            knn_error FLOAT,
            knn_distance FLOAT
        );
        """
    )


def _m6_detection3d(con: duckdb.DuckDBPyConnection) -> None:
    # 3D detection: rotated 3D boxes beside the 2D columns, point counts, frames without pixels.
    box3d = ", ".join(f"ADD COLUMN IF NOT EXISTS {c} FLOAT" for c in ("x", "y", "z", "dx", "dy", "dz", "yaw"))
    for table in ("boxes", "gt_boxes"):
        for part in box3d.split(", "):
            con.execute(f"ALTER TABLE {table} {part}")
    con.execute("ALTER TABLE boxes ADD COLUMN IF NOT EXISTS n_points INTEGER")
    con.execute("ALTER TABLE images ADD COLUMN IF NOT EXISTS n_points INTEGER")
    con.execute("ALTER TABLE images ALTER COLUMN width DROP NOT NULL")
    con.execute("ALTER TABLE images ALTER COLUMN height DROP NOT NULL")


# MIGRATIONS[i] brings a file from schema i to schema i + 1. Append, never edit.
MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
    _m1_base,
    _m2_checkpoint,
    _m3_results,
    _m4_selections,
    _m5_detection,
    _m6_detection3d,
]
SCHEMA_VERSION = len(MIGRATIONS)
