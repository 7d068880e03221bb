"""`score`: apply a result to any run of the same model, batch by batch.

A ``Scorer`` holds what a result needs at scoring time (the reference bank with its stored
OOD distances, the refitted error model, the zone rules, the class names) and turns a frame
of outputs plus their features into error_proba, ood_score, zone and error codes; it is the
same function whether the rows come from the store or, later, from a live inference loop.
Runs are streamed from DuckDB in batches, so memory does not grow with the run; large runs
are searched with an inverted file (``ivf.py``) instead of exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from ml_debugger.core import neighbors
from ml_debugger.core.detection import DETECTION_TASKS
from ml_debugger.core.errormodel import ErrorModel, signal_arrays, signal_frame
from ml_debugger.core.store import ResultInfo, RunInfo, Store
from ml_debugger.core.summary import zone_table
from ml_debugger.core.zones import ZoneRules, assign, assign_arrays, error_codes
from ml_debugger.errors import UsageError

# Columns of the scores table (besides result, run, sample_id).
SCORE_COLUMNS = (
    "error_proba",
    "ood_score",
    "zone",
    "error_code",
    "knn_disagree",
    "trust_score",
    "knn_distance",
    "knn_vote",
)
# Rows scored per batch: bounds memory (a batch of 512-wide features is ~100 MB).
BATCH_ROWS = 50_000
# Defaults for results stored before these settings existed.
_EXACT_MAX_PAIRS = 5e9
_IVF_PROBES = 32


@dataclass(frozen=True)
class ScoreSummary:
    """Scores of one run under one result."""

    result: str
    run: str
    samples: int
    cached: bool
    zones: list[dict]
    labelled: bool


def labelled_frame(store: Store, run: RunInfo) -> pl.DataFrame:
    """The run's outputs of labelled samples, by sample_id."""
    return store.read_outputs(run.name).filter(pl.col("label").is_not_null())


def run_features(store: Store, run: RunInfo, sample_ids: pl.Series) -> np.ndarray:
    """The run's features in the order of ``sample_ids``."""
    ids, feats = store.read_features(run.name)
    if not len(ids):
        raise UsageError(f"run {run.name!r} has no stored features; re-extract it with `mldbg extract --overwrite`")
    pos = pl.DataFrame({"sample_id": ids, "_i": np.arange(len(ids))})
    take = pl.DataFrame({"sample_id": sample_ids}).join(pos, on="sample_id", how="left", maintain_order="left")
    return feats[take["_i"].to_numpy()]


def score_rows(scored: pl.DataFrame) -> pl.DataFrame:
    """The columns of a scored frame that the scores table keeps."""
    if "error_code" not in scored.columns:
        scored = scored.with_columns(pl.lit(None, dtype=pl.String).alias("error_code"))
    return scored.select("sample_id", *SCORE_COLUMNS).with_columns(
        pl.col("error_proba", "ood_score", "knn_disagree", "trust_score", "knn_distance").cast(pl.Float32),
        pl.col("knn_vote").cast(pl.Int32),
    )


@dataclass(frozen=True)
class Scorer:
    """Everything a result needs to score rows: bank, error model, zone rules, classes."""

    result: ResultInfo
    bank: neighbors.Bank
    model: ErrorModel
    rules: ZoneRules

    def score_frame(self, frame: pl.DataFrame, features: np.ndarray) -> pl.DataFrame:
        """``frame`` (outputs: pred, confidence, probs, …) with error_proba, ood_score, zone,
        error_code and the kNN signals; ``features`` ``[len(frame), d]`` in the same order."""
        knn = neighbors.knn_signals(features, frame["pred"].to_numpy(), self.bank)
        signals = signal_frame(frame, knn)
        if not self.result.stability:  # fitted without stability: zone it the same way, whatever the run has
            signals = signals.with_columns(pl.lit(None, dtype=pl.Float32).alias(c) for c in ("stability", "flip_rate"))
        scored = signals.with_columns(pl.Series("error_proba", self.model.predict(signals), dtype=pl.Float64))
        scored = assign(scored, self.rules)
        if "label" not in scored.columns:
            scored = scored.with_columns(pl.lit(None, dtype=pl.Int32).alias("label"))
        return scored.with_columns(error_codes(scored, self.result.classes))

    @cached_property
    def class_names(self) -> np.ndarray:
        """The result's class names as an array, for indexing by predicted class (built once)."""
        return np.asarray(self.result.classes, dtype=object)

    def score_arrays(self, outputs: dict[str, np.ndarray], features: np.ndarray) -> dict[str, np.ndarray]:
        """``score_frame`` without Polars, for real time: ``outputs`` holds NumPy arrays of the
        softmax signals (pred, confidence, margin, entropy, energy, probs ``[n, C]``, and with
        stability: stability, flip_rate, perturbed_confidence); returns every signal plus
        error_proba, zone (names) and predicted (class names)."""
        knn = neighbors.knn_signals(features, outputs["pred"], self.bank, live=True)
        sig = signal_arrays(outputs, knn)
        sig["error_proba"] = self.model.predict_arrays(sig)
        measured = self.result.stability and "stability" in sig
        sig["zone"] = assign_arrays(
            self.rules,
            error_proba=sig["error_proba"],
            confidence=sig["confidence"],
            pred=sig["pred"],
            ood_score=sig["ood_score"],
            stability=sig["stability"] if measured else None,
            flip_rate=sig["flip_rate"] if measured else None,
        )
        sig["predicted"] = self.class_names[np.asarray(sig["pred"], dtype=np.int64)]
        return sig


def load_scorer(store: Store, info: ResultInfo, *, expected_rows: int = 0) -> Scorer:
    """The scorer of ``info``; with an inverted-file bank when ``expected_rows`` × bank is large."""
    import torch

    ref = store.require_run(info.reference_run)
    ref_frame = labelled_frame(store, ref)
    ref_feats = run_features(store, ref, ref_frame["sample_id"])
    arrays = store.result_arrays(info.name)
    ev = info.config["evaluate"]
    k = int(ev["k"])
    bank = neighbors.Bank(
        neighbors.normalize(ref_feats),
        torch.from_numpy(ref_frame["label"].to_numpy().astype(np.int64)),
        len(info.classes),
        max(1, min(k, ref_frame.height - 1)),
        torch.from_numpy(arrays["bank_self_distances"].astype(np.float32)),
    )
    if expected_rows * len(bank) > float(ev.get("exact_max_pairs", _EXACT_MAX_PAIRS)):
        bank = neighbors.with_ivf(bank, probes=int(ev.get("ivf_probes", _IVF_PROBES)), seed=int(ev.get("seed", 0)))
    return Scorer(info, bank, ErrorModel.from_dict(info.model), ZoneRules.from_dict(info.thresholds, info.classes))


def compute_scores(store: Store, info: ResultInfo, run: RunInfo, *, batch_rows: int = BATCH_ROWS) -> pl.DataFrame:
    """Score rows (``score_rows``) of every sample of ``run`` under ``info``, not stored."""
    scorer = load_scorer(store, info, expected_rows=store.count("outputs", run.name))
    parts = [
        score_rows(scorer.score_frame(frame, feats))
        for frame, feats in store.iter_outputs(run.name, int(run.feature_dim or 0), batch_rows=batch_rows)
    ]
    return pl.concat(parts) if parts else score_rows(pl.DataFrame())


def find_result(store: Store, run: RunInfo, result: str | None) -> ResultInfo:
    """``result`` by name, or the newest result of the run's task, model version and classes."""
    if result:
        return store.require_result(result)
    for info in store.matching_results(run.task, run.model_name, run.model_version):
        if info.classes == run.classes:
            return info
    raise UsageError(
        f"no result for model {run.model_name}/{run.model_version} ({run.task}) with run {run.name!r}'s classes; "
        "fit one with `mldbg evaluate LABELLED_RUN`"
    )


def compatibility_problems(result: ResultInfo, run: RunInfo) -> list[str]:
    """Why ``result`` cannot score ``run`` (task, model version, classes, feature width); empty if it can."""
    problems = []
    if run.task != result.task:
        problems.append(f"task {run.task} ≠ {result.task}")
    if (run.model_name, run.model_version) != (result.model_name, result.model_version):
        problems.append(f"model {run.model_name}/{run.model_version} ≠ {result.model_name}/{result.model_version}")
    if run.classes != result.classes:
        problems.append(f"{len(run.classes)} classes ≠ the result's {len(result.classes)} (or another order)")
    if run.feature_dim != result.feature_dim:
        problems.append(f"feature width {run.feature_dim} ≠ {result.feature_dim}")
    return problems


def check_compatible(result: ResultInfo, run: RunInfo) -> None:
    """Refuse to score a run of another task, model version, class list or feature width."""
    problems = compatibility_problems(result, run)
    if problems:
        raise UsageError(
            f"result {result.name} cannot score run {run.name!r}: {'; '.join(problems)}; "
            "evaluate a labelled run of this model first"
        )
    if result.stability and run.stability_k == 0:
        raise UsageError(
            f"result {result.name} uses stability signals but run {run.name!r} was extracted without them; "
            "re-extract it with --stability K --overwrite"
        )


def score(
    run_name: str, *, db: str | Path | None = None, result: str | None = None, force: bool = False
) -> ScoreSummary:
    """Score every sample of ``run_name`` with a result (by name, or the newest matching one)."""
    with Store(db) as store:
        run = store.require_run(run_name)
        info = find_result(store, run, result)
        if run.task in DETECTION_TASKS:
            return _score_detection(store, info, run, force)
        check_compatible(info, run)
        if run.status != "complete":
            raise UsageError(f"run {run.name!r} is {run.status}; finish it by re-running its extract command")
        cached = store.scored_info(info.name, run.name)
        if cached is None or (force and not cached["out_of_fold"]):
            store.write_scores(info.name, run.name, compute_scores(store, info, run))
            cached_flag = False
        else:
            cached_flag = True
        frame = store.read_zones(info.name, run.name)
    labelled = frame["is_error"].null_count() < frame.height
    return ScoreSummary(info.name, run.name, frame.height, cached_flag, zone_table(frame), labelled)


def _score_detection(store: Store, info: ResultInfo, run: RunInfo, force: bool) -> ScoreSummary:
    from ml_debugger.core.detection.evaluate import check_detection_compatible, score_boxes
    from ml_debugger.core.detection.strategy import box_is_error

    check_detection_compatible(info, run)
    if run.status != "complete":
        raise UsageError(f"run {run.name!r} is {run.status}; finish it by re-running its extract command")
    cached = store.scored_info(info.name, run.name)
    fresh = cached is None or (force and not cached["out_of_fold"])
    if fresh:
        store.write_scores(info.name, run.name, score_boxes(store, info, run), table="box_scores")
    frame = store.con.sql(
        "SELECT zone, error_code FROM box_scores WHERE result = $r AND run = $run",
        params={"r": info.name, "run": run.name},
    ).pl()
    frame = frame.with_columns(box_is_error())
    labelled = frame["is_error"].null_count() < frame.height
    return ScoreSummary(info.name, run.name, frame.height, not fresh, zone_table(frame), labelled)
