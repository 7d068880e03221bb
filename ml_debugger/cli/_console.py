"""Output helpers shared by every command: consoles, tables, JSON, one-line errors, progress."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ml_debugger.errors import MldbgError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class _State:
    quiet = False


state = _State()


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn an MldbgError into one line on stderr and its exit code; anything else is a bug."""
    try:
        yield
    except MldbgError as e:
        err.print(Text(f"error: {e}", style="red"), soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted", soft_wrap=True)
        raise typer.Exit(130) from None


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Treat SIGTERM (``kill``) like Ctrl-C, so long jobs save their finished work and stop cleanly."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def status(message: str) -> None:
    """A progress note on stderr (hidden by --quiet)."""
    if not state.quiet:
        err.print(message, soft_wrap=True)


def drop_and_report(kind: str, name: str, db: str | None, json: bool) -> None:
    """Delete a run, result or selection (``kind``) in the store and say so (or print JSON)."""
    with user_errors():
        from ml_debugger.core.store import Store

        with Store(db) as store:
            {"run": store.drop_run, "result": store.drop_result, "selection": store.drop_selection}[kind](name)
            path = store.path
    if json:
        print_json({"dropped": name, "kind": kind, "db": str(path)})
    else:
        out.print(f"dropped {kind} [bold]{name}[/bold] from {path}")


def configure_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING)
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    state.quiet = quiet


def _default(o: Any) -> Any:
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, default=_default, indent=2) + "\n")
    sys.stdout.flush()


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def short_path(path: str) -> str:
    """A path relative to the working directory when inside it, else its last two parts."""
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(Path("…", *p.parts[-2:])) if len(p.parts) > 3 else path


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    numeric: Sequence[str] = (),
    no_wrap: Sequence[str] = ("created",),
) -> Table:
    """A rich table; ``numeric`` columns are right-aligned; they and ``no_wrap`` are never wrapped."""
    t = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for c in columns:
        t.add_column(
            c, justify="right" if c in numeric else "left", no_wrap=c in numeric or c in no_wrap, overflow="fold"
        )
    for r in rows:
        t.add_row(*(fmt(v) for v in r))
    return t


def kv_table(rows: Sequence[tuple[str, Any]]) -> Table:
    """A two-column key/value table without a header."""
    t = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for key, value in rows:
        t.add_row(key, value if isinstance(value, str) else fmt(value))
    return t


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"– {self.unit}/s", style="cyan")


@contextmanager
def progress_bar(description: str, unit: str = "samples") -> Iterator[Any]:
    """Yield a ``progress(done, total)`` callback drawing a rich bar on stderr (silent with --quiet)."""
    if state.quiet:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )
    task_id = None

    def update(done: int, total: int) -> None:
        nonlocal task_id
        if task_id is None:  # the first call gives the starting point (a resume starts part-way)
            task_id = bar.add_task(description, total=total, completed=done)
        else:
            bar.update(task_id, completed=done, total=total)

    with bar:
        yield update
