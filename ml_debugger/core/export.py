"""Export a selection as a manifest for labelers: one writer per format, in the ``WRITERS`` registry.

Every row: rank, sample_id, path (absolute), zone, error_proba, confidence, predicted (class
name), error_code (labelled runs), run, result, selection. Files are written to a temporary
file next to the target and renamed into place, so a failed export never leaves half a
manifest; ``--copy-to`` copies (or links) the images themselves, keeping relative paths.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import polars as pl

from ml_debugger import __version__
from ml_debugger.core.query import candidates
from ml_debugger.core.store import Store
from ml_debugger.errors import UsageError

COLUMNS = (
    "rank",
    "sample_id",
    "path",
    "zone",
    "error_proba",
    "confidence",
    "predicted",
    "error_code",
    "run",
    "result",
    "selection",
)


@dataclass(frozen=True)
class Manifest:
    """A selection's rows (``COLUMNS``) and its header."""

    header: dict[str, Any]
    rows: pl.DataFrame


def load_manifest(store: Store, selection: str | None) -> Manifest:
    """The rows of ``selection`` (the newest when None), in rank order."""
    sel = store.require_selection(selection)
    classes = store.require_run(sel["run"]).classes
    items = store.selection_items(sel["id"])
    scores = candidates(store, sel["result"], sel["run"], classes, selection=sel["id"]).collect().drop("rank")
    rows = items.join(scores, on="sample_id", how="left", maintain_order="left").with_columns(
        pl.lit(sel["run"]).alias("run"), pl.lit(sel["result"]).alias("result"), pl.lit(sel["id"]).alias("selection")
    )
    missing = [c for c in COLUMNS if c not in rows.columns]
    rows = rows.with_columns(pl.lit(None).alias(c) for c in missing).select(COLUMNS)
    header = {
        "tool": f"mldbg {__version__}",
        "created": datetime.now().isoformat(timespec="seconds"),
        "selection": sel["id"],
        "selected": sel["created"].isoformat(timespec="seconds"),
        "run": sel["run"],
        "result": sel["result"],
        "strategy": sel["strategy"],
        "count": rows.height,
        "zones": dict(rows.group_by("zone").len().sort("zone").iter_rows()),
    }
    return Manifest(header, rows)


def write_csv(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    fh.write(m.rows.write_csv())


def write_json(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    """The header's keys, then ``items``: one object per row (Polars writes the rows)."""
    head = json.dumps(m.header, default=str)
    fh.write(head[:-1] + ', "items": ' + m.rows.write_json() + "}\n")


def write_jsonl(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    fh.write(m.rows.write_ndjson())


def write_labelstudio(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    """Label Studio tasks: ``data.image``, a ``choices`` prediction of the predicted class scored
    by error_proba (sort by it in the Data Manager), and mldbg's view in ``meta``.

    The labeling config these fit: ``<Image name="image" value="$image"/>`` and
    ``<Choices name="choice" toName="image">`` with the class names.
    """
    image = pl.lit(url_prefix) + pl.col("sample_id") if url_prefix is not None else pl.col("path")
    choice = pl.struct(
        from_name=pl.lit("choice"),
        to_name=pl.lit("image"),
        type=pl.lit("choices"),
        value=pl.struct(choices=pl.concat_list(pl.col("predicted"))),
    )
    prediction = pl.struct(model_version=pl.col("result"), score=pl.col("error_proba"), result=pl.concat_list(choice))
    tasks = m.rows.select(
        pl.struct(image=image, sample_id=pl.col("sample_id")).alias("data"),
        pl.concat_list(prediction).alias("predictions"),
        pl.struct(pl.col("rank", "zone", "error_proba", "confidence", "error_code", "run", "result")).alias("meta"),
    )
    fh.write(tasks.write_json() + "\n")


WRITERS: dict[str, Callable[[Manifest, IO[str], str | None], None]] = {
    "csv": write_csv,
    "json": write_json,
    "jsonl": write_jsonl,
    "labelstudio": write_labelstudio,
}


def write_atomic(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write through a temporary file in the same directory, then rename it into place."""
    if not path.parent.is_dir():
        raise UsageError(f"output directory {path.parent} does not exist; create it or choose another --out")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_images(rows: pl.DataFrame, dest: Path, *, link: bool = False, force: bool = False) -> int:
    """Copy (or symlink) each row's image to ``dest/<sample_id>``; refuses paths leaving ``dest``."""
    if dest.exists() and any(dest.iterdir()) and not force:
        raise UsageError(f"--copy-to {dest} is not empty; choose an empty folder or pass --force")
    root = dest.resolve()
    plan = []
    for sid, src in rows.select("sample_id", "path").iter_rows():
        target = (root / sid).resolve()
        if not target.is_relative_to(root):
            raise UsageError(f"sample {sid!r} would be written outside {dest}; refusing the copy")
        if not Path(src).is_file():
            raise UsageError(f"image {src} of sample {sid!r} no longer exists; nothing was copied")
        plan.append((Path(src), target))
    for src, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if link:
            target.symlink_to(src.resolve())
        else:
            shutil.copy2(src, target)
    return len(plan)


@dataclass(frozen=True)
class ExportSummary:
    selection: str
    format: str
    out: str
    rows: int
    copied: int


def export(
    selection: str | None = None,
    *,
    db: str | Path | None = None,
    fmt: str = "csv",
    out: str | None = None,
    stream: IO[str] | None = None,
    url_prefix: str | None = None,
    copy_to: str | Path | None = None,
    link: bool = False,
    force: bool = False,
) -> ExportSummary:
    """Write ``selection`` (the newest when None) as ``fmt`` to ``out`` (``-``: ``stream``)."""
    if fmt not in WRITERS:
        raise UsageError(f"unknown export format {fmt!r}; choose from: {', '.join(WRITERS)}")
    if out is None and copy_to is None:
        raise UsageError("say where to write: --out FILE (or - for stdout) and/or --copy-to DIR")
    with Store(db, read_only=True) as store:
        manifest = load_manifest(store, selection)
    write = WRITERS[fmt]
    if out == "-":
        if stream is None:
            raise UsageError("--out - needs an output stream")
        write(manifest, stream, url_prefix)
    elif out is not None:
        write_atomic(Path(out), lambda fh: write(manifest, fh, url_prefix))
    copied = copy_images(manifest.rows, Path(copy_to), link=link, force=force) if copy_to else 0
    return ExportSummary(manifest.header["selection"], fmt, out or "", manifest.rows.height, copied)
