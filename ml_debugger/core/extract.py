"""The extraction engine: stream a dataset through the model into the store.

Batches come from a DataLoader (decoding in worker processes); each batch's outputs, features
and skipped files are written in one transaction. The database is opened only to write, for a
moment every ``flush_seconds``, so other processes can read it during a long extraction. An
interrupted extraction (Ctrl-C, kill -9) resumes from what was committed when the same command
runs again; per-sample perturbation seeds make the result identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ml_debugger import __version__
from ml_debugger.core.datasets import Dataset, open_dataset, read_classes_file
from ml_debugger.core.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, load_image
from ml_debugger.core.models import FeatureModel, is_factory_spec, load_model
from ml_debugger.core.signals import softmax_signals, stability_signals
from ml_debugger.core.stability import StabilityConfig, perturb
from ml_debugger.core.store import RunInfo, Store, resolve_db_path
from ml_debugger.core.writer import BatchWriter, RawBatch
from ml_debugger.errors import DatasetError, Interrupted, ModelError, RunExistsError, UsageError

log = logging.getLogger(__name__)

TASK = "classification"
# Try this many leading files before concluding that a dataset has no decodable image.
_PROBE_LIMIT = 64


def check_run_name(name: str) -> None:
    if not name or any(c in name for c in "/\\\n"):
        raise UsageError(f"run name {name!r} is not valid; use letters, digits, '-', '_' or '.'")


@dataclass(frozen=True)
class ExtractRequest:
    """Everything ``mldbg extract`` needs; ``None`` means "use the default"."""

    dataset: str
    name: str
    model: str
    weights: str | None = None
    layer: str | None = None
    model_name: str | None = None
    model_version: str = "v1"
    checkpoint: str | None = None
    dataset_format: str | None = None
    classes_file: str | None = None
    image_size: int = 224
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    overwrite: bool = False
    flush_seconds: float = 2.0

    def __post_init__(self) -> None:
        check_run_name(self.name)
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size} must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers {self.workers} must be 0 (decode in the main process) or more")


@dataclass(frozen=True)
class ExtractSummary:
    """What one ``extract`` call did."""

    run: str
    db: str
    status: str  # complete | up-to-date | interrupted
    n_total: int
    n_samples: int
    n_skipped: int
    n_new: int
    resumed: bool
    seconds: float
    labelled: bool
    accuracy: float | None
    feature_layer: str | None
    feature_dim: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


ProgressFn = Callable[[int, int], None]


class _Images(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, paths: list[str], pre: Preprocess) -> None:
        self.paths, self.pre = paths, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, load_image(self.paths[i], self.pre), None
        except Exception as err:  # any undecodable file is recorded, never fatal
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return i, None, f"{type(err).__name__}: {reason}"[:300]


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    # A NumPy array travels from the worker by pickling, not through torch's shared-memory file
    # descriptors: no /dev/shm limits, and no resource-sharer noise when the job is interrupted.
    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, err or "unreadable") for i, t, err in items if t is None]
    x = torch.stack([t for _, t in ok]).numpy() if ok else None
    return [i for i, _ in ok], x, failed


class _Batches:
    """Iterates a DataLoader of ``_collate`` batches, handing out torch tensors."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:  # type: ignore[type-arg]
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
        for rows, x, failed in self.loader:
            yield rows, (None if x is None else torch.from_numpy(x)), failed


def default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def image_loader(paths: list[str], pre: Preprocess, *, batch_size: int, workers: int | None = None) -> _Batches:
    """The DataLoader extraction uses: batches of ``(row indices, images [B, C, S, S] or None, failures)``.

    Decoding happens in ``workers`` processes; a file that cannot be decoded becomes a
    ``(row, reason)`` failure instead of an exception.
    """
    loader = torch.utils.data.DataLoader(
        _Images(paths, pre),
        batch_size=batch_size,
        num_workers=default_workers() if workers is None else workers,
        collate_fn=_collate,
    )
    return _Batches(loader)


def _resolve_preprocess(req: ExtractRequest, model: FeatureModel) -> Preprocess:
    channels = req.channels or model.input_channels() or 3
    if channels not in (1, 3):
        channels = 3
    mean = req.mean or (IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,))
    std = req.std or (IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,))
    return Preprocess(image_size=req.image_size, channels=channels, mean=tuple(mean), std=tuple(std))


def _fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _probe(model: FeatureModel, dataset: Dataset, pre: Preprocess) -> tuple[int, int]:
    """Run one decodable image through the model: (number of outputs, feature width)."""
    for path in dataset.paths[:_PROBE_LIMIT]:
        try:
            x = load_image(path, pre).unsqueeze(0)
        except Exception:
            continue
        logits, feats = model(x.to(model.device))
        return int(logits.shape[1]), int(feats.shape[1])
    raise DatasetError(
        f"none of the first {min(_PROBE_LIMIT, len(dataset))} images in {dataset.root} could be decoded; "
        "check that the files are images"
    )


def _open_run(store: Store, req: ExtractRequest, info: RunInfo) -> tuple[RunInfo, bool]:
    """Create the run, or return the existing one to resume. (run, resumed)"""
    existing = store.get_run(req.name)
    if existing is not None and req.overwrite:
        store.drop_run(req.name)
        existing = None
    if existing is None:
        store.create_run(info)
        return info, False
    if existing.fingerprint != info.fingerprint:
        fields = {"model_sha256": "model file", "dataset_path": "dataset", "dataset_format": "dataset format",
                  "classes": "classes", "settings": "preprocessing/stability/layer settings"}  # fmt: skip
        changed = [label for key, label in fields.items() if getattr(existing, key) != getattr(info, key)]
        raise RunExistsError(
            f"run {req.name!r} already exists in {store.path} with different settings "
            f"({', '.join(changed) or 'model or data'}); pass --overwrite to replace it or --name for a new run"
        )
    return existing, True


def _run_info(req: ExtractRequest, dataset: Dataset, model: FeatureModel, pre: Preprocess,
              classes: list[str], feat_dim: int) -> RunInfo:  # fmt: skip
    """The ``runs`` row of this extraction, with the fingerprint that decides whether to resume."""
    settings = {
        "preprocess": pre.to_dict(),
        "stability": req.stability.to_dict(),
        "layer": req.layer,
        "weights": str(Path(req.weights).resolve()) if req.weights else None,
    }
    root = str(Path(req.dataset).resolve())
    return RunInfo(
        name=req.name,
        task=TASK,
        model_name=req.model_name or _default_model_name(req.model),
        model_version=req.model_version,
        model_path=req.model if model.format == "factory" else str(Path(req.model).resolve()),
        model_format=model.format,
        model_sha256=model.sha256,
        dataset_path=root,
        dataset_format=dataset.format,
        labelled=dataset.labelled,
        classes=classes,
        feature_layer=model.layer,
        feature_dim=feat_dim,
        stability_k=req.stability.k,
        settings=settings,
        fingerprint=_fingerprint(
            {
                "task": TASK,
                "model": model.sha256,
                "dataset": root,
                "format": dataset.format,
                "classes": classes,
                "settings": settings,
            }
        ),
        n_expected=len(dataset),
        mldbg_version=__version__,
        checkpoint=req.checkpoint,
    )


def extract(req: ExtractRequest, *, db: str | os.PathLike[str] | None = None,
            progress: ProgressFn | None = None) -> ExtractSummary:  # fmt: skip
    """Extract outputs, features and stability of every sample of ``req.dataset`` into ``db``.

    Parameters
    ----------
    req
        The dataset, model and options.
    db
        The DuckDB file (default ``$MLDBG_DB`` or ``./mldbg.duckdb``).
    progress
        Called as ``progress(done, total)`` after every batch.

    Returns
    -------
    ExtractSummary

    Raises
    ------
    MldbgError
        Bad dataset, model, classes or run name; ``Interrupted`` on Ctrl-C after saving
        every finished batch.
    """
    t0 = time.perf_counter()
    db_path = resolve_db_path(db)
    classes = read_classes_file(req.classes_file) if req.classes_file else None
    dataset = open_dataset(req.dataset, format=req.dataset_format, classes=classes)
    model = load_model(req.model, weights=req.weights, layer=req.layer, device=req.device)
    pre = _resolve_preprocess(req, model)
    n_out, feat_dim = _probe(model, dataset, pre)
    run_classes = list(dataset.classes) or [str(i) for i in range(n_out)]
    if len(run_classes) != n_out:
        source = f"--classes {req.classes_file}" if req.classes_file else f"the labels of {dataset.root}"
        raise ModelError(
            f"the model outputs {n_out} scores per image but {source} gives {len(run_classes)} classes; "
            f"pass --classes FILE listing all {n_out} class names in the model's output order"
        )
    info = _run_info(req, dataset, model, pre, run_classes, feat_dim)
    with Store(db_path) as store:
        run, resumed = _open_run(store, req, info)
        done = store.done_sample_ids(req.name)
    todo = [i for i, sid in enumerate(dataset.sample_ids) if sid not in done]
    n_new = 0
    total = len(dataset)
    if progress:
        progress(total - len(todo), total)
    writer = BatchWriter(db_path, req.name, req.flush_seconds)
    try:
        if todo:
            n_new = _run_batches(req, model, pre, dataset, todo, writer, progress, total)
        writer.close()
        with Store(db_path) as store:
            store.update_run(req.name, status="complete", finished=datetime.now(), n_expected=total)
            n_samples = store.count("samples", req.name)
            n_skipped = store.count("skipped", req.name)
            accuracy = store.accuracy(req.name) if run.labelled else None
    except KeyboardInterrupt:
        writer.close()  # commits every finished batch still buffered
        saved = len(done) + writer.committed
        raise Interrupted(
            f"interrupted: {saved:,} of {total:,} samples of run {req.name!r} are saved in {db_path}; "
            "run the same command again to resume"
        ) from None
    except BaseException:
        writer.close_after_error()
        raise
    return ExtractSummary(
        run=req.name,
        db=str(db_path),
        status="complete" if todo else "up-to-date",
        n_total=total,
        n_samples=n_samples,
        n_skipped=n_skipped,
        n_new=n_new,
        resumed=resumed,
        seconds=round(time.perf_counter() - t0, 3),
        labelled=run.labelled,
        accuracy=accuracy,
        feature_layer=run.feature_layer,
        feature_dim=run.feature_dim,
    )


# The whole loop in inference mode, as users' own loops run: the decoded batches are then
# inference tensors too, and every op after the forward pass skips autograd's bookkeeping
# (4-5% of a small CNN's classification extraction, measured side by side).
@torch.inference_mode()
def _run_batches(req: ExtractRequest, model: FeatureModel, pre: Preprocess, dataset: Dataset, todo: list[int],
                 writer: BatchWriter, progress: ProgressFn | None, total: int) -> int:  # fmt: skip
    loader = image_loader(
        [dataset.paths[i] for i in todo],
        pre,
        batch_size=req.batch_size,
        workers=req.workers,
    )
    k = req.stability.k
    done = total - len(todo)
    n_new = 0
    for local_idx, x, failed in loader:
        rows = [todo[i] for i in local_idx]
        raw = RawBatch(
            ids=[dataset.sample_ids[i] for i in rows],
            paths=[dataset.paths[i] for i in rows],
            labels=[dataset.labels[i] for i in rows],
        )
        if x is not None:
            x = x.to(model.device, non_blocking=True)
            logits, feats = model(x)
            signals = softmax_signals(logits)
            if k:
                model.set_mc_dropout(req.stability.mc_dropout)
                try:
                    plogits, pfeats = model(perturb(x, raw.ids, req.stability))
                finally:
                    model.set_mc_dropout(False)
                signals.update(stability_signals(feats, signals["pred"], plogits, pfeats, k))
            raw.signals = {key: value.cpu() for key, value in signals.items()}
            raw.features = feats.cpu()
            n_new += len(rows)
        if failed:
            raw.skipped = []
            for i, reason in failed:
                sid, path = dataset.sample_ids[todo[i]], dataset.paths[todo[i]]
                raw.skipped.append((sid, path, reason))
                log.warning("skipped %s: %s", path, reason)
        writer.add(raw)
        done += len(local_idx) + len(failed)
        if progress:
            progress(done, total)
    return n_new


def _default_model_name(spec: str) -> str:
    """``model.pt2`` → ``model``; ``pkg.nets:build`` → ``nets``."""
    if is_factory_spec(spec):
        return spec.split(":")[0].split(".")[-1]
    return Path(spec).stem
