"""Turning finished batches into rows and committing them, off the forward-pass thread.

``batch_frames`` is the pure function (tensors in, Polars frames out) that a future sharded or
Ray-based extraction can call as is. ``BatchWriter`` runs in a background thread and commits
every ``flush_seconds``: the batches buffered since the last commit are concatenated (one
concatenation per signal, so the per-row work is vectorised and done once per commit, leaving
the forward-pass thread the GIL) and written in one transaction, one insert per table, so only
whole batches are ever stored. Between commits the database file is closed, so readers in
other processes are not locked out for a whole run.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ml_debugger.core.store import Store, hold_single_thread

# Batches waiting for the writer thread; bounds memory when the disk is slower than the model.
_MAX_QUEUED = 8
_STOP = object()
# Until a commit has had this many rows, the run's commits let DuckDB merge row groups
# (see ``BatchWriter.settings``).
VACUUM_BELOW_ROWS = 4096
# DuckDB's own default for max_vacuum_tasks: merging on (stores start with it off).
_VACUUM_TASKS = 100


def commit_rows(frames: dict[str, Any]) -> int:
    """The rows of the largest table of one commit."""
    return max((len(f) for f in frames.values() if f is not None), default=0)


@dataclass
class RawBatch:
    """One forward pass's results, as CPU tensors (or a batch of unreadable files only)."""

    ids: list[str]
    paths: list[str]
    labels: list[int | None]
    signals: dict[str, Any] | None = None  # softmax_signals (+ stability_signals) output
    features: Any = None  # [B, D] tensor
    skipped: list[tuple[str, str, str]] | None = None  # (sample_id, path, reason)


def own_raw(raw: RawBatch) -> RawBatch:
    """``raw`` with its tensors copied into NumPy arrays allocated by the calling (writer) thread.

    A batch's small tensors come from the forward-pass thread's heap; kept there for the 2 s
    until the next commit, they sit between the model's large activation buffers, and the heap
    then grows around them. Peak RSS of three extractions of 50,000 samples: 730-1,194 MiB,
    each peak during a commit, against 602-616 MiB with the copies (see BENCHMARKS.md).
    """
    if raw.signals is not None:
        raw.signals = {k: np.array(v.numpy() if hasattr(v, "numpy") else v) for k, v in raw.signals.items()}
    if raw.features is not None:
        raw.features = np.array(raw.features.numpy() if hasattr(raw.features, "numpy") else raw.features)
    return raw


def merge_raw(batches: list[RawBatch]) -> RawBatch:
    """Concatenate raw batches (one concatenation per signal), so rows are built once per commit."""
    with_rows = [b for b in batches if b.signals is not None and b.ids]
    merged = RawBatch(
        ids=[i for b in with_rows for i in b.ids],
        paths=[p for b in with_rows for p in b.paths],
        labels=[label for b in with_rows for label in b.labels],
        skipped=[s for b in batches for s in (b.skipped or [])],
    )
    if with_rows:
        keys = with_rows[0].signals or {}
        merged.signals = {k: np.concatenate([b.signals[k] for b in with_rows]) for k in keys}  # type: ignore[index]
        merged.features = np.concatenate([b.features for b in with_rows])
    return merged


def _index_lists(mask: np.ndarray) -> pl.Series:
    """``[N, C]`` booleans → a list column of the True column indices of each row (no Python loop)."""
    import pyarrow as pa

    rows, cols = np.nonzero(mask)
    offsets = np.zeros(mask.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=mask.shape[0]), out=offsets[1:])
    array = pa.ListArray.from_arrays(pa.array(offsets), pa.array(cols.astype(np.int32)))
    return pl.Series(pl.from_arrow(array)).cast(pl.List(pl.Int32))


def batch_frames(raw: RawBatch) -> dict[str, Any]:
    """Rows for ``Store.write_batch``: samples, outputs, features (ndarray) and skipped frames."""
    out: dict[str, Any] = {}
    if raw.skipped:
        sid, path, reason = zip(*raw.skipped, strict=True)
        out["skipped"] = pl.DataFrame({"sample_id": list(sid), "path": list(path), "reason": list(reason)})
    if raw.signals is None or not raw.ids:
        return out
    sig = {k: np.asarray(v) for k, v in raw.signals.items()}
    n = len(raw.ids)
    feats = np.asarray(raw.features).astype(np.float32, copy=False)
    probs = sig["probs"].astype(np.float32, copy=False)
    cols: dict[str, Any] = {
        "sample_id": raw.ids,
        "pred": sig["pred"].astype(np.int32),
        **{c: sig[c].astype(np.float32, copy=False) for c in ("confidence", "margin", "entropy", "energy")},
        "probs": pl.Series(probs, dtype=pl.Array(pl.Float32, probs.shape[1])).cast(pl.List(pl.Float32)),
        "feature_norm": np.linalg.norm(feats, axis=1).astype(np.float32),
    }
    if "stability" in sig:
        for c in ("stability", "flip_rate", "perturbed_confidence"):
            cols[c] = sig[c].astype(np.float32, copy=False)
        cols["flip_classes"] = _index_lists(sig["flip_mask"])
    else:
        for c in ("stability", "flip_rate", "perturbed_confidence"):
            cols[c] = pl.Series([None] * n, dtype=pl.Float32)
        cols["flip_classes"] = pl.Series([None] * n, dtype=pl.List(pl.Int32))
    out["samples"] = pl.DataFrame(
        {"sample_id": raw.ids, "path": raw.paths, "label": pl.Series(raw.labels, dtype=pl.Int32)}
    )
    out["outputs"] = pl.DataFrame(cols)
    out["features"] = feats
    return out


class BatchWriter:
    """Commits batches from a background thread; ``close()`` commits the rest and re-raises errors.

    From construction to ``close()`` the process's DuckDB runs on one thread
    (``store.hold_single_thread``): the model's forward passes have the cores.
    """

    def __init__(self, db: Path, run: str, flush_seconds: float) -> None:
        self.db, self.run, self.flush_seconds = db, run, flush_seconds
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_MAX_QUEUED)
        self._error: BaseException | None = None
        self.committed = 0  # samples + skipped files committed so far
        self._large = False  # a commit of this run had VACUUM_BELOW_ROWS rows or more
        hold_single_thread(True)
        self._holding = True
        self._thread = threading.Thread(target=self._loop, name="mldbg-writer", daemon=True)
        self._thread.start()

    def add(self, raw: RawBatch) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(raw)

    def close(self) -> None:
        """Commit everything queued, stop the thread, and raise what it raised (if anything).

        Safe to call again (e.g. after a Ctrl-C interrupted the first call's wait).
        """
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self._holding:
            self._holding = False
            hold_single_thread(False)
        if self._error is not None:
            raise self._error

    def close_after_error(self) -> None:
        """``close()`` on the way out of another error: commit the finished batches (a resumed
        run starts after them), and leave that error, not one of the writer's, to propagate."""
        with suppress(Exception):
            self.close()

    def _own(self, item: Any) -> Any:
        """Take a queued item into this thread's memory (see ``own_raw``)."""
        return own_raw(item)

    def settings(self, frames: dict[str, Any]) -> dict[str, int | str]:
        """DuckDB settings for the commit of ``frames``.

        DuckDB's thread count is not among them: the writer holds it at one for its whole life
        (see the class). Large commits keep their own row groups (the stores' baseline,
        ``store._base.BASELINE_SETTINGS``): merging re-wrote the row groups that earlier commits
        appended again and again (1, 2, 1, 4, 1, 2, 1, 8 commits' worth of rows), which doubled
        the cost of a commit, and the store that marks the run complete re-wrote the whole run
        (0.11 s of a 6 s extraction of 20,000 images). Until a commit is large, the run's commits
        merge (a slow model's commits are small), so a run never piles up thousands of tiny row
        groups.
        """
        self._large = self._large or commit_rows(frames) >= VACUUM_BELOW_ROWS
        return {} if self._large else {"max_vacuum_tasks": _VACUUM_TASKS}

    def _commit(self, pending: list[RawBatch]) -> None:
        rows = batch_frames(merge_raw(pending))
        with Store(self.db, settings=self.settings(rows)) as store:
            store.write_batch(self.run, **rows)
        self.committed += sum(rows[k].height for k in ("samples", "skipped") if rows.get(k) is not None)

    def _loop(self) -> None:
        pending: list[RawBatch] = []
        last = time.monotonic()
        try:
            while True:
                try:
                    # Never a zero timeout: that would spin, holding the GIL the forward pass needs.
                    item = self._queue.get(timeout=max(self.flush_seconds, 0.05))
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    pending.append(self._own(item))
                if pending and time.monotonic() - last >= self.flush_seconds:
                    self._commit(pending)
                    pending, last = [], time.monotonic()
            if pending:
                self._commit(pending)
        except BaseException as err:  # handed to the main thread by add()/close()
            self._error = err
            while True:  # drain, so a producer blocked on a full queue is released
                try:
                    if self._queue.get_nowait() is _STOP:
                        break
                except queue.Empty:
                    break
