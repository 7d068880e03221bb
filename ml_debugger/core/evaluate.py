"""`evaluate`: fit a result on a labelled run (``scoring.py`` applies it to other runs).

Read the labelled run (and the reference bank, the same run unless ``reference``) → kNN
signals (leave-one-out on the bank) → cross-fitted error model → zones (calibrated
stable_coverage cut-off) → error codes → metrics → one transaction storing the result, its
arrays and the run's out-of-fold scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from ml_debugger import __version__
from ml_debugger.core import neighbors
from ml_debugger.core.config import load_config
from ml_debugger.core.errormodel import METHOD, fit_error_model, signal_frame
from ml_debugger.core.scoring import labelled_frame, run_features, score_rows
from ml_debugger.core.store import ResultInfo, RunInfo, Store
from ml_debugger.core.summary import evaluation_metrics
from ml_debugger.core.zones import ZoneRules, assign, calibrate_stable, error_codes, parse_rules
from ml_debugger.errors import UsageError

TASK = "classification"


@dataclass(frozen=True)
class EvaluateSummary:
    """A stored result and what fitting it had to say."""

    result: ResultInfo
    notes: list[str] = field(default_factory=list)


def result_name(model_name: str, model_version: str, when: datetime) -> str:
    """``{model}_{version}_{method}_{YYYYMMDD}``, e.g. ``digits_v1_classification_v1_20261204``."""
    return f"{model_name}_{model_version}_{METHOD}_{when:%Y%m%d}"


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
    name: str | None = None,
    reference: str | None = None,
    config: str | Path | None = None,
    now: datetime | None = None,
) -> EvaluateSummary:
    """Fit a result on the labelled run ``run_name`` and store it.

    ``name`` defaults to ``{model}_{version}_classification_v1_{YYYYMMDD}`` (``_2``, ``_3``… when
    taken); ``reference`` names another labelled run of the same model as the kNN bank;
    ``config`` is a YAML file overriding ``configs/default.yaml``'s evaluate and zones sections.

    Raises
    ------
    UsageError
        The run is unlabelled, unfinished, too small, or the config is invalid.
    """
    cfg = load_config(config)
    ev, zcfg = cfg["evaluate"], cfg["zones"]
    with Store(db) as store:
        if name is not None and (not name.strip() or store.get_result(name) is not None):
            raise UsageError(f"a result named {name!r} exists (or the name is empty); choose another --result-name")
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
        frame = labelled_frame(store, run)
        if frame.height < 3:
            raise UsageError(f"run {run.name!r} has {frame.height} labelled sample(s); evaluate needs at least 3")
        feats = run_features(store, run, frame["sample_id"])
        ref = store.require_run(reference) if reference else run
        if ref is not run:
            _check_reference(run, ref)
            ref_frame = labelled_frame(store, ref)
            ref_feats = run_features(store, ref, ref_frame["sample_id"])
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
        name = name or store.unique_result_name(result_name(run.model_name, run.model_version, when))
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
        store.create_result(info, arrays, score_rows(scored))
    return EvaluateSummary(info, notes)


def _finish_rules(rules: ZoneRules, scored: pl.DataFrame, zcfg: dict[str, Any], stability: bool) -> ZoneRules:
    """Fill ``hotspot_stability`` from the labelled run's stability when the config leaves it null."""
    th = dict(rules.thresholds)
    if th.get("hotspot_stability") is None:
        q = float(zcfg["hotspot_stability_quantile"])
        value = scored["stability"].quantile(q) if stability else None
        th["hotspot_stability"] = float(value) if value is not None else None  # type: ignore[arg-type]
    return ZoneRules(th, rules.per_class)
