"""Record and evaluate from code: ``ClassificationTracer`` writes runs, ``Evaluator`` fits results.

For users with their own data loaders: ``tracer(images, labels, input_ids=...)`` writes the
same rows ``mldbg extract`` writes (samples, outputs, features), batched by a background
writer, into a run named after the model, version and ``dataset_type``; ``Evaluator`` wraps
``mldbg evaluate / results / show``.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn

from ml_debugger import __version__
from ml_debugger.core.signals import softmax_signals
from ml_debugger.core.store import ResultInfo, RunInfo, Store, resolve_db_path
from ml_debugger.core.writer import BatchWriter, RawBatch
from ml_debugger.errors import UsageError
from ml_debugger.filters._hook import FeatureHook

DATASET_TYPES = ("train", "val", "test", "pool")
# Seconds between commits of the background writer (as `extract`'s flush_seconds).
FLUSH_SECONDS = 2.0


class ClassificationTracer:
    """Write a run from your own loop: one call per batch, ``close()`` (or ``with``) at the end.

    Parameters
    ----------
    model, model_name, version_name
        Your ``nn.Module`` and the names its results will carry.
    target_layers
        The module whose output is the feature (default: the input of the last ``nn.Linear``).
    db
        The mldbg database (default ``./mldbg.duckdb`` or ``$MLDBG_DB``).
    classes
        Class names in output order (default ``"0"``, ``"1"``, …).
    run_name
        Default ``{model_name}_{version_name}_{dataset_type}``; an existing run of that name is
        refused (drop it with `mldbg runs drop`).

    Examples
    --------
    >>> with ClassificationTracer(net, "digits", "v1") as tracer:  # doctest: +SKIP
    ...     for images, labels, ids in loader:
    ...         tracer(images, labels, input_ids=ids, dataset_type="val")
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        version_name: str,
        target_layers: str | list[str] | None = None,
        db: str | Path | None = None,
        classes: list[str] | None = None,
        run_name: str | None = None,
        hook: FeatureHook | None = None,
        stability_k: int = 0,
    ) -> None:
        self._hook = hook or FeatureHook(model, target_layers, None)
        self.model_name, self.version_name = model_name, version_name
        self.db = resolve_db_path(db)
        self.classes = classes
        self.run_name = run_name
        self.stability_k = stability_k  # set when record() is given stability signals
        self.run: str | None = None
        self.dataset_type: str | None = None
        self._writer: BatchWriter | None = None
        self._counter = itertools.count()
        self._rows = 0

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | list[int] | None = None,
        input_ids: list[Any] | None = None,
        dataset_type: str = "val",
    ) -> Any:
        """Run the model on ``images``, record the batch, and return the model's output unchanged."""
        n = int(images.shape[0])
        if input_ids is None:
            input_ids = [next(self._counter) for _ in range(n)]
        if len(input_ids) != n:
            raise UsageError(f"input_ids has {len(input_ids)} entries for a batch of {n}; give one id per input")
        labs: list[int | None] = [int(v) for v in labels] if labels is not None else [None] * n
        if len(labs) != n:
            raise UsageError(f"labels has {len(labs)} entries for a batch of {n}")
        out, logits, feats = self._hook(images)
        self.record([str(i) for i in input_ids], labs, logits, feats, dataset_type)
        return out

    def record(
        self,
        ids: list[str],
        labels: list[int | None],
        logits: torch.Tensor,
        feats: torch.Tensor,
        dataset_type: str,
        stability: dict[str, torch.Tensor] | None = None,
        signals: dict[str, Any] | None = None,
    ) -> None:
        """Queue one batch whose forward pass has run already (logits and features on the CPU;
        ``stability``: the signals of ``stability_signals`` when the caller computed them;
        ``signals``: every signal, when the caller has them already, e.g. ``softmax_arrays``'s)."""
        self._open(dataset_type, any(v is not None for v in labels), logits.shape[1], feats.shape[1])
        if any(v is not None and not 0 <= v < logits.shape[1] for v in labels):
            raise UsageError(f"labels must be class indices 0..{logits.shape[1] - 1}")
        assert self._writer is not None
        if signals is None:
            signals = {**softmax_signals(logits), **(stability or {})}
        self._writer.add(RawBatch(ids=ids, paths=ids, labels=labels, signals=signals, features=feats))
        self._rows += len(ids)

    def _open(self, dataset_type: str, labelled: bool, n_classes: int, dim: int) -> None:
        if self._writer is not None:
            if dataset_type != self.dataset_type:
                raise UsageError(
                    f"this tracer records the {self.dataset_type} run {self.run!r}; use another tracer for "
                    f"{dataset_type!r}"
                )
            return
        if dataset_type not in DATASET_TYPES:
            raise UsageError(f"dataset_type {dataset_type!r}; choose from: {', '.join(DATASET_TYPES)}")
        classes = self.classes or [str(c) for c in range(n_classes)]
        if len(classes) != n_classes:
            raise UsageError(f"{len(classes)} class names for a model with {n_classes} outputs")
        name = self.run_name or f"{self.model_name}_{self.version_name}_{dataset_type}"
        digest = hashlib.sha256(f"{name}|{datetime.now().isoformat()}".encode()).hexdigest()
        info = RunInfo(
            name=name, task="classification", model_name=self.model_name, model_version=self.version_name,
            model_path=f"python:{type(self._hook.model).__name__}", model_format="python", model_sha256="",
            dataset_path=f"python:{dataset_type}", dataset_format="tracer",
            labelled=labelled and dataset_type != "pool",
            classes=classes, feature_layer=self._hook.layer, feature_dim=dim, stability_k=self.stability_k,
            settings={"dataset_type": dataset_type}, fingerprint=digest, mldbg_version=__version__,
        )  # fmt: skip
        with Store(self.db) as store:
            if store.get_run(name) is not None:
                raise UsageError(f"a run named {name!r} exists; pass run_name=… or `mldbg runs drop {name}`")
            store.create_run(info)
        self.run, self.dataset_type = name, dataset_type
        self._writer = BatchWriter(self.db, name, FLUSH_SECONDS)

    def close(self) -> str | None:
        """Commit what is buffered and mark the run complete; returns the run name."""
        if self._writer is None or self.run is None:
            return None
        self._writer.close()
        with Store(self.db) as store:
            store.update_run(self.run, status="complete", n_expected=self._rows, finished=datetime.now())
        self._writer = None
        return self.run

    def __enter__(self) -> ClassificationTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Evaluator:
    """``mldbg evaluate / results / show`` for one model version, from Python."""

    def __init__(self, model_name: str, version_name: str, db: str | Path | None = None) -> None:
        self.model_name, self.version_name, self.db = model_name, version_name, db

    def request_evaluation(
        self, run: str, result_name: str | None = None, options: dict[str, dict[str, Any]] | None = None
    ) -> ResultInfo:
        """Fit a result on the labelled ``run``; ``options`` overrides config sections, e.g.
        ``{"zones": {"coverage_target": 0.05}}``."""
        import tempfile

        import yaml

        from ml_debugger.core.evaluate import evaluate

        with Store(self.db, read_only=True) as store:
            info = store.require_run(run)
        if (info.model_name, info.model_version) != (self.model_name, self.version_name):
            raise UsageError(f"run {run!r} is of {info.model_name}/{info.model_version}, not this evaluator's model")
        if not options:
            return evaluate(run, db=self.db, name=result_name).result
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            yaml.safe_dump(options, fh)
        try:
            return evaluate(run, db=self.db, name=result_name, config=fh.name).result
        finally:
            Path(fh.name).unlink(missing_ok=True)

    def list_results(self) -> pl.DataFrame:
        """This model version's results, oldest first."""
        with Store(self.db, read_only=True) as store:
            frame = store.list_results()
        return frame.filter((pl.col("model_name") == self.model_name) & (pl.col("model_version") == self.version_name))

    def get_result(self, name: str) -> ResultInfo:
        with Store(self.db, read_only=True) as store:
            return store.require_result(name)
