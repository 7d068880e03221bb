"""``ClassificationDataFilter``: flag samples in real time, inside your own inference loop.

The filter wraps your ``nn.Module``: each call runs the model once, returns its output
unchanged, and scores the batch with a fitted result (the same ``Scorer`` that ``mldbg score``
uses, so the real-time error_proba equals the batch path's), giving one flag per input.

Thread safety: one filter may be called from several threads; calls are serialised (the
feature hook keeps one capture per filter), so each call's flags and ``last`` belong to that
call. For parallel throughput, build one filter per thread.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from ml_debugger.core.scoring import Scorer, load_scorer
from ml_debugger.core.signals import softmax_arrays, stability_signals
from ml_debugger.core.stability import StabilityConfig, perturb
from ml_debugger.core.store import ResultInfo, Store
from ml_debugger.errors import ModelError, UsageError
from ml_debugger.filters._hook import FeatureHook
from ml_debugger.filters.config import FilterConfig
from ml_debugger.filters.tracer import ClassificationTracer

TASK = "classification"
# What ``last`` holds for each input of the latest call.
LAST_COLUMNS = ("input_ids", "error_proba", "zone", "confidence", "predicted", "ood_score")


def find_result(store: Store, task: str, model_name: str, version_name: str, result_name: str | None) -> ResultInfo:
    """``result_name``, or the newest result of this task and model version; checked."""
    if result_name is not None:
        info = store.require_result(result_name)
    else:
        found = store.matching_results(task, model_name, version_name)
        if not found:
            raise UsageError(
                f"no {task} result for model {model_name}/{version_name} in {store.path}; "
                "fit one with `mldbg evaluate LABELLED_RUN` (runs extracted with --model-name "
                f"{model_name} --model-version {version_name})"
            )
        info = found[0]
    if info.task != task or (info.model_name, info.model_version) != (model_name, version_name):
        raise UsageError(
            f"result {info.name} is a {info.task} result of {info.model_name}/{info.model_version}, "
            f"not {task} of {model_name}/{version_name}"
        )
    return info


class ClassificationDataFilter:
    """Score each batch with a fitted result and flag the samples worth collecting.

    Parameters
    ----------
    model
        Your classification ``nn.Module`` (logits ``[B, C]``, or ``(logits, features)``).
    model_name, version_name
        The names its runs were extracted under (``--model-name``, ``--model-version``).
    result_name
        A result (``mldbg results``); None = the newest result of this model version.
    filter_config
        ``{"target_zones": [...], "conditions": [...]}`` or a ``FilterConfig``; None = no flags
        (every flag is None), only scores in ``last``.
    target_layers
        The module whose output is the feature (a name, or a one-name list); default: the layer
        the result's runs were extracted from (the input of the last ``nn.Linear``).
    db
        The mldbg database (default ``./mldbg.duckdb`` or ``$MLDBG_DB``); read once, then closed.
    device
        Move the model there first (``"cpu"``, ``"cuda"``); default: leave it where it is.
    stability
        Compute the stability signals in real time, as ``--stability K`` did for the result's
        runs: K perturbed copies of each batch in one extra forward pass (with K=4 on the demo's
        small CNN, a batch of 64 cost 6.6x the bare call; see BENCHMARKS.md). Needed for, and only
        for, results fitted with stability.
    mc_dropout
        With ``stability``: switch the model's dropout on in the perturbed copies (default: as the
        runs' settings say). A ``.pt2`` or TorchScript model was exported in eval mode, so its
        extraction had no MC-dropout: pass ``False`` to score its live module the same way.
    record, run_name
        Also store every scored input as an unlabelled run (``run_name``, default
        ``{model}_{version}_pool``) with its scores under the result, written in the background
        every few seconds; call ``close()`` (or use ``with``) at the end to finish the run.

    Examples
    --------
    >>> f = ClassificationDataFilter(net, model_name="digits", version_name="v1",  # doctest: +SKIP
    ...                              filter_config={"target_zones": ["critical_hotspot"]})
    >>> output, flags = f(images, input_ids=ids)  # doctest: +SKIP
    >>> f.last  # input_ids, error_proba, zone, confidence, predicted, ood_score  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        version_name: str,
        result_name: str | None = None,
        filter_config: FilterConfig | dict[str, Any] | None = None,
        target_layers: str | list[str] | None = None,
        db: str | Path | None = None,
        device: str | torch.device | None = None,
        record: bool = False,
        run_name: str | None = None,
        stability: bool = False,
        mc_dropout: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.config = FilterConfig.from_value(filter_config) if filter_config is not None else None
        self.db = db
        with Store(db, read_only=True) as store:
            self.result = find_result(store, TASK, model_name, version_name, result_name)
            eval_run = store.require_run(self.result.eval_run)
            if self.result.stability and not stability:
                raise UsageError(
                    f"result {self.result.name} was fitted with --stability {eval_run.stability_k} signals; pass "
                    f"stability=True (each call then runs {eval_run.stability_k} perturbed copies too), or use a "
                    "result fitted on a run extracted without --stability"
                )
            if stability and not self.result.stability:
                raise UsageError(f"result {self.result.name} has no stability signals; leave stability=False")
            layer = eval_run.feature_layer
            self.scorer: Scorer = load_scorer(store, self.result)
        self.model = model.to(device) if device is not None else model
        self.model_name, self.version_name = model_name, version_name
        self._last: tuple[list[Any], dict[str, Any]] | pl.DataFrame | None = None
        self._counter = itertools.count()
        self._hook = FeatureHook(self.model, target_layers, layer)
        self._stability = StabilityConfig(**eval_run.settings["stability"]) if stability else None
        if self._stability is not None and mc_dropout is not None:
            self._stability = replace(self._stability, mc_dropout=mc_dropout)
        self._dropouts = [m for m in self.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        self._recorder: ClassificationTracer | None = None
        self._scores: list[tuple[list[str], dict[str, Any]]] = []  # one frame at close(), not per call
        if record:
            name = run_name or f"{model_name}_{version_name}_pool"
            with Store(db, read_only=True) as store:
                if store.get_run(name) is not None:
                    raise UsageError(f"a run named {name!r} exists; pass run_name=… or `mldbg runs drop {name}`")
            self._recorder = ClassificationTracer(
                self.model, model_name, version_name, db=db, classes=self.result.classes, run_name=name,
                hook=self._hook, stability_k=eval_run.stability_k if stability else 0,
            )  # fmt: skip

    # -- the call -----------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, input_ids: list[Any] | None = None) -> tuple[Any, list[bool | None]]:
        """Run the model on ``x`` and score it: ``(model output unchanged, one flag per input)``.

        ``input_ids`` name the inputs in ``last`` (default: a running counter). Inputs on another
        device than the model are moved to the model's device.
        """
        n = int(x.shape[0])
        if input_ids is None:
            input_ids = [next(self._counter) for _ in range(n)]
        if len(input_ids) != n:
            raise UsageError(f"input_ids has {len(input_ids)} entries for a batch of {n}; give one id per input")
        out, logits, feats = self._hook(x)
        extra = self._perturbed(x, [str(i) for i in input_ids], logits, feats) if self._stability else {}
        outputs, cols = self._score(logits, feats, extra)
        self._last = (list(input_ids), cols)  # a frame only when ``last`` is read
        if self._recorder is not None:
            ids = [str(i) for i in input_ids]
            signals = {**outputs, **extra}  # the softmax signals just computed, not again
            self._recorder.record(ids, [None] * n, logits, feats, "pool", signals=signals)
            self._scores.append((ids, {k: cols[k] for k in _SCORE_KEYS}))
        if self.config is None:
            return out, [None] * n
        return out, list(self.config.flags(cols))

    @property
    def last(self) -> pl.DataFrame | None:
        """The last call's inputs: input_ids, error_proba, zone, confidence, predicted, ood_score."""
        if isinstance(self._last, tuple):
            ids, cols = self._last
            self._last = pl.DataFrame(
                {
                    "input_ids": ids,
                    "error_proba": cols["error_proba"],
                    "zone": cols["zone"].astype(str),
                    "confidence": cols["confidence"],
                    "predicted": cols["predicted"].astype(str),
                    "ood_score": cols["ood_score"],
                }
            )
        return self._last

    def close(self) -> str | None:
        """Finish the recorded run (``record=True``): commit it and store its scores; its name."""
        if self._recorder is None:
            return None
        run = self._recorder.close()
        if run is not None and self._scores:
            with Store(self.db) as store:
                store.write_scores(self.result.name, run, _score_rows(self._scores))
        self._recorder, self._scores = None, []
        return run

    def __enter__(self) -> ClassificationDataFilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _perturbed(self, x: torch.Tensor, ids: list[str], logits: torch.Tensor, feats: torch.Tensor) -> dict:
        """Stability signals from K perturbed copies (seeded per input id, as `extract` makes them)."""
        cfg = self._stability
        assert cfg is not None
        dev = self._hook.device()
        xp = perturb(x.to(dev) if dev is not None else x, ids, cfg)
        on = cfg.mc_dropout and bool(self._dropouts)
        for m in self._dropouts if on else ():
            m.train(True)
        try:
            with torch.no_grad():
                _, plogits, pfeats = self._hook(xp)
        finally:
            for m in self._dropouts if on else ():
                m.train(False)
        pred = logits.argmax(dim=1)
        return {k: v for k, v in stability_signals(feats, pred, plogits, pfeats, cfg.k).items()}

    def _score(self, logits: torch.Tensor, f: torch.Tensor, extra: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the softmax signals, every score column) of one batch."""
        if f.shape[1] != (self.result.feature_dim or 0):
            raise ModelError(
                f"the hooked layer {self._hook.layer!r} gives {f.shape[1]} features, but result {self.result.name} "
                f"was fitted on {self.result.feature_dim}; pass the right target_layers"
            )
        if logits.shape[1] != len(self.result.classes):
            raise ModelError(
                f"the model gives {logits.shape[1]} classes, result {self.result.name} has {len(self.result.classes)}"
            )
        outputs = softmax_arrays(logits.numpy())
        scored = {**outputs, **{k: v.numpy() for k, v in extra.items() if k != "flip_mask"}}
        return outputs, self.scorer.score_arrays(scored, f.numpy())

    # -- querying the store ---------------------------------------------------------------
    def query(self, n_data: int, strategy: str | dict[str, Any] = "high_error_proba", run: str | None = None) -> list:
        """Select ``n_data`` sample ids of a run with this filter's result, saved as a selection.

        ``strategy`` is a name (``"high_error_proba"``, ``"low_error_proba"``, ``"random"``,
        ``"diverse"``, ``"class_balanced"``) or a dict with ``target_zones``, ``conditions`` and
        options (``strategy``, ``min_value``, ``max_value``, ``seed``, ``min_per_class``). ``run``
        defaults to the newest run of this model version. The same code as `mldbg query`.
        """
        from ml_debugger.core.query import run_query

        spec = _spec(n_data, strategy)
        if run is None:
            with Store(self.db, read_only=True) as store:
                runs = store.list_runs().filter(
                    (pl.col("model_name") == self.model_name) & (pl.col("model_version") == self.version_name)
                )
            if runs.height == 0:
                raise UsageError(f"no runs of {self.model_name}/{self.version_name} to query; extract one first")
            run = str(runs["name"][-1])
        answer = run_query(spec, db=self.db, run=run, result=self.result.name)
        return answer.rows["sample_id"].to_list()


_SCORE_KEYS = ("error_proba", "ood_score", "zone", "knn_disagree", "trust_score", "knn_distance", "knn_vote")


def _score_rows(batches: list[tuple[list[str], dict[str, Any]]]) -> pl.DataFrame:
    """The scores-table rows of the recorded batches (as ``scoring.score_rows`` keeps them)."""
    ids = [i for batch_ids, _ in batches for i in batch_ids]
    col = {k: np.concatenate([c[k] for _, c in batches]) for k in _SCORE_KEYS}
    return pl.DataFrame(
        {
            "sample_id": ids,
            "error_proba": col["error_proba"].astype("float32"),
            "ood_score": col["ood_score"].astype("float32"),
            "zone": col["zone"].astype(str),
            "error_code": pl.Series([None] * len(ids), dtype=pl.String),
            "knn_disagree": col["knn_disagree"].astype("float32"),
            "trust_score": col["trust_score"].astype("float32"),
            "knn_distance": col["knn_distance"].astype("float32"),
            "knn_vote": col["knn_vote"].astype("int32"),
        }
    )


_SPEC_KEYS = ("strategy", "target_zones", "conditions", "min_value", "max_value", "seed", "min_per_class")


def _spec(n_data: int, strategy: str | dict[str, Any]) -> Any:
    from ml_debugger.core.query import QuerySpec

    if isinstance(strategy, str):
        return QuerySpec(strategy=strategy, n=n_data)
    if not isinstance(strategy, dict):
        raise UsageError(f"strategy must be a name or a dict, not {type(strategy).__name__}")
    unknown = sorted(set(strategy) - set(_SPEC_KEYS))
    if unknown:
        raise UsageError(f"strategy has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_SPEC_KEYS)}")
    return QuerySpec(
        strategy=strategy.get("strategy", "high_error_proba"),
        n=n_data,
        zones=list(strategy.get("target_zones") or []),
        conditions=list(strategy.get("conditions") or []),
        min_value=strategy.get("min_value"),
        max_value=strategy.get("max_value"),
        seed=int(strategy.get("seed", 0)),
        min_per_class=strategy.get("min_per_class"),
    )
