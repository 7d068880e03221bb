"""Output helpers shared by every command: consoles, tables, JSON, one-line errors, progress."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import typer
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


def table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[str] = ()
) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if c in numeric else "left")
    for r in rows:
        t.add_row(*(fmt(v) for v in r))
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
