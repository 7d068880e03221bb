"""`evaluate` fits a result on a labelled run; `score` applies a result to any run of the same model.

evaluate: read the labelled run (and the reference bank, the same run unless ``reference``)
→ kNN signals (leave-one-out on the bank) → cross-fitted error model → zones (calibrated
stable_coverage cut-off) → error codes → metrics → one transaction storing the result, its
arrays and the run's out-of-fold scores. score: check the run matches the result, rebuild
the bank from the reference run, compute the same signals, apply the refitted model and the
stored thresholds, cache the scores per (result, run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ml_debugger import __version__
from ml_debugger.core import neighbors
from ml_debugger.core.config import load_config
from ml_debugger.core.errormodel import METHOD, ErrorModel, fit_error_model, signal_frame
from ml_debugger.core.store import ResultInfo, RunInfo, Store
from ml_debugger.core.summary import evaluation_metrics, zone_table
from ml_debugger.core.zones import ZoneRules, assign, calibrate_stable, error_codes, parse_rules
from ml_debugger.errors import UsageError

log = logging.getLogger(__name__)

TASK = "classification"
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


@dataclass(frozen=True)
class EvaluateSummary:
    """A stored result and what fitting it had to say."""

    result: ResultInfo
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScoreSummary:
    """Scores of one run under one result."""

    result: str
    run: str
    samples: int
    cached: bool
    zones: list[dict]
    labelled: bool


def result_name(model_name: str, model_version: str, when: datetime) -> str:
    """``{model}_{version}_{method}_{YYYYMMDD}``, e.g. ``digits_v1_classification_v1_20261204``."""
    return f"{model_name}_{model_version}_{METHOD}_{when:%Y%m%d}"


def _labelled_frame(store: Store, run: RunInfo) -> pl.DataFrame:
    outputs = store.read_outputs(run.name)
    return outputs.filter(pl.col("label").is_not_null())


def _features(store: Store, run: RunInfo, sample_ids: pl.Series) -> np.ndarray:
    ids, feats = store.read_features(run.name)
    if not len(ids):
        raise UsageError(f"run {run.name!r} has no stored features; re-extract it with `mldbg extract --overwrite`")
    pos = pl.DataFrame({"sample_id": ids, "_i": np.arange(len(ids))})
    take = pl.DataFrame({"sample_id": sample_ids}).join(pos, on="sample_id", how="left", maintain_order="left")
    return feats[take["_i"].to_numpy()]


def _check_reference(run: RunInfo, ref: RunInfo) -> None:
    if not ref.labelled:
        raise UsageError(f"--reference {ref.name!r} is not labelled; the kNN bank needs labels")
    if (ref.model_name, ref.model_version) != (run.model_name, run.model_version):
        raise UsageError(
            f"--reference {ref.name!r} was extracted with {ref.model_name}/{ref.model_version}, "
            f"not {run.model_name}/{run.model_version}; use a run of the same model"
        )
    if ref.classes != run.classes or ref.feature_dim != run.feature_dim:
        raise UsageError(f"--reference {ref.name!r} has other classes or feature width than {run.name!r}")


def evaluate(
    run_name: str,
    *,
    db: str | Path | None = None,
    result_name_: str | None = None,
    reference: str | None = None,
    config: str | Path | None = None,
    now: datetime | None = None,
) -> EvaluateSummary:
    """Fit a result on the labelled run ``run_name`` and store it.

    Raises
    ------
    UsageError
        The run is unlabelled, unfinished, too small, or the config is invalid.
    """
    cfg = load_config(config)
    ev, zcfg = cfg["evaluate"], cfg["zones"]
    with Store(db) as store:
        run = store.require_run(run_name)
        if run.task != TASK:
            raise UsageError(f"run {run.name!r} is a {run.task} run; this evaluates {TASK} runs")
        if not run.labelled:
            raise UsageError(
                f"run {run.name!r} is unlabelled; evaluate a labelled run (class folders or a manifest with labels), "
                f"then `mldbg score {run.name}`"
            )
        if run.status != "complete":
            raise UsageError(f"run {run.name!r} is {run.status}; finish it by re-running its extract command")
        rules = parse_rules(zcfg, run.classes, where=f"--config {config}" if config else "zones")
        frame = _labelled_frame(store, run)
        if frame.height < 3:
            raise UsageError(f"run {run.name!r} has {frame.height} labelled sample(s); evaluate needs at least 3")
        feats = _features(store, run, frame["sample_id"])
        ref = store.require_run(reference) if reference else run
        if ref is not run:
            _check_reference(run, ref)
            ref_frame = _labelled_frame(store, ref)
            ref_feats = _features(store, ref, ref_frame["sample_id"])
        notes: list[str] = []
        if int((frame["label"] < 0).sum()) or int((frame["label"] >= len(run.classes)).sum()):
            raise UsageError(f"run {run.name!r} has labels outside its {len(run.classes)} classes")
        k = int(ev["k"])
        if ref is run:
            bank, raw = neighbors.build_bank(feats, frame["label"].to_numpy(), len(run.classes), k=k)
            knn = neighbors.signals_from_search(raw, frame["pred"].to_numpy(), bank)
        else:
            bank, _ = neighbors.build_bank(ref_feats, ref_frame["label"].to_numpy(), len(run.classes), k=k)
            knn = neighbors.knn_signals(feats, frame["pred"].to_numpy(), bank)
        if bank.k < k:
            notes.append(f"the reference bank has {len(bank)} samples, so k = {bank.k} instead of {k}")
        signals = signal_frame(frame, knn)
        is_error = signals["pred"] != signals["label"]
        stability = run.stability_k > 0 and signals["stability"].null_count() == 0
        fit = fit_error_model(
            signals,
            is_error.to_numpy(),
            stability=stability,
            folds=int(ev["folds"]),
            l2=float(ev["l2"]),
            seed=int(ev["seed"]),
            min_errors=int(ev["min_errors"]),
        )
        notes.extend(fit.notes)
        scored = signals.with_columns(pl.Series("error_proba", fit.oof_proba, dtype=pl.Float64), is_error=is_error)
        rules = _finish_rules(rules, scored, zcfg, stability)
        calibration = None
        if zcfg["mode"] == "calibrated":
            rules, calibration = calibrate_stable(
                scored,
                is_error,
                rules,
                target=float(zcfg["coverage_target"]),
                level=float(zcfg["coverage_level"]),
                candidates=int(zcfg["coverage_candidates"]),
            )
            if calibration.cutoff is None:
                notes.append(
                    f"no error_proba cut-off keeps stable_coverage's error rate under {calibration.target:.1%} "
                    f"with {calibration.level:.0%} confidence on {frame.height} labelled samples: stable_coverage "
                    "is empty; label more data or raise zones.coverage_target"
                )
        scored = assign(scored, rules)
        scored = scored.with_columns(error_codes(scored, run.classes))
        metrics = evaluation_metrics(
            scored, run.classes, confident=float(ev["confident"]), level=float(zcfg["coverage_level"])
        )
        metrics["calibration"] = "Platt scaling of the out-of-fold logits"
        metrics["coverage"] = calibration.to_dict() if calibration else None
        metrics["model_kind"] = fit.model.kind
        metrics["notes"] = notes
        when = now or datetime.now()
        name = result_name_ or store.unique_result_name(result_name(run.model_name, run.model_version, when))
        if result_name_ and store.get_result(result_name_) is not None:
            raise UsageError(f"a result named {result_name_!r} exists; choose another --result-name")
        info = ResultInfo(
            name=name,
            task=TASK,
            model_name=run.model_name,
            model_version=run.model_version,
            method=METHOD,
            eval_run=run.name,
            reference_run=ref.name,
            classes=run.classes,
            feature_dim=run.feature_dim,
            stability=stability,
            config={"evaluate": ev, "zones": zcfg},
            thresholds=rules.to_dict(run.classes),
            model=fit.model.to_dict(),
            metrics=metrics,
            created=when,
            mldbg_version=__version__,
        )
        arrays = {"bank_self_distances": bank.self_distances.numpy()}
        store.create_result(info, arrays, _score_rows(scored))
    return EvaluateSummary(info, notes)


def _finish_rules(rules: ZoneRules, scored: pl.DataFrame, zcfg: dict[str, Any], stability: bool) -> ZoneRules:
    """Fill ``hotspot_stability`` from the labelled run's stability when the config leaves it null."""
    th = dict(rules.thresholds)
    if th.get("hotspot_stability") is None:
        q = float(zcfg["hotspot_stability_quantile"])
        value = scored["stability"].quantile(q) if stability else None
        th["hotspot_stability"] = float(value) if value is not None else None  # type: ignore[arg-type]
    return ZoneRules(th, rules.per_class)


def _score_rows(scored: pl.DataFrame) -> pl.DataFrame:
    cols = ["sample_id", *SCORE_COLUMNS]
    if "error_code" not in scored.columns:
        scored = scored.with_columns(pl.lit(None, dtype=pl.String).alias("error_code"))
    return scored.select(cols).with_columns(
        pl.col("error_proba").cast(pl.Float32),
        pl.col("ood_score").cast(pl.Float32),
        pl.col("knn_disagree").cast(pl.Float32),
        pl.col("trust_score").cast(pl.Float32),
        pl.col("knn_distance").cast(pl.Float32),
        pl.col("knn_vote").cast(pl.Int32),
    )


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


def check_compatible(result: ResultInfo, run: RunInfo) -> None:
    """Refuse to score a run of another task, model version, class list or feature width."""
    problems = []
    if run.task != result.task:
        problems.append(f"task {run.task} ≠ {result.task}")
    if (run.model_name, run.model_version) != (result.model_name, result.model_version):
        problems.append(f"model {run.model_name}/{run.model_version} ≠ {result.model_name}/{result.model_version}")
    if run.classes != result.classes:
        problems.append(f"{len(run.classes)} classes ≠ the result's {len(result.classes)} (or another order)")
    if run.feature_dim != result.feature_dim:
        problems.append(f"feature width {run.feature_dim} ≠ {result.feature_dim}")
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
        check_compatible(info, run)
        if run.status != "complete":
            raise UsageError(f"run {run.name!r} is {run.status}; finish it by re-running its extract command")
        cached = store.scored_info(info.name, run.name)
        if cached is None or (force and not cached["out_of_fold"]):
            scored = compute_scores(store, info, run)
            store.write_scores(info.name, run.name, _score_rows(scored))
            cached_flag = False
        else:
            cached_flag = True
        scores = store.read_scores(info.name, run.name)
    frame = scores.with_columns((pl.col("pred") != pl.col("label")).alias("is_error"))
    labelled = frame["label"].null_count() < frame.height
    return ScoreSummary(info.name, run.name, frame.height, cached_flag, zone_table(frame), labelled)


def compute_scores(store: Store, info: ResultInfo, run: RunInfo) -> pl.DataFrame:
    """The scored frame of ``run`` under ``info`` (not stored)."""
    import torch

    ref = store.require_run(info.reference_run)
    ref_frame = _labelled_frame(store, ref)
    ref_feats = _features(store, ref, ref_frame["sample_id"])
    arrays = store.result_arrays(info.name)
    k = int(info.config["evaluate"]["k"])
    bank = neighbors.Bank(
        neighbors.normalize(ref_feats),
        torch.from_numpy(ref_frame["label"].to_numpy().astype(np.int64)),
        len(info.classes),
        max(1, min(k, ref_frame.height - 1)),
        torch.from_numpy(arrays["bank_self_distances"].astype(np.float32)),
    )
    frame = store.read_outputs(run.name)
    feats = _features(store, run, frame["sample_id"])
    knn = neighbors.knn_signals(feats, frame["pred"].to_numpy(), bank)
    signals = signal_frame(frame, knn)
    if not info.stability:  # fitted without stability: zone it the same way, whatever the run has
        signals = signals.with_columns(pl.lit(None, dtype=pl.Float32).alias(c) for c in ("stability", "flip_rate"))
    model = ErrorModel.from_dict(info.model)
    scored = signals.with_columns(pl.Series("error_proba", model.predict(signals), dtype=pl.Float64))
    scored = assign(scored, ZoneRules.from_dict(info.thresholds, info.classes))
    return scored.with_columns(error_codes(scored, info.classes))
