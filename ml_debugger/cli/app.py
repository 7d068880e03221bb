"""The root ``mldbg`` command: global options, ``./mldbg.yaml`` defaults, and the sub-commands.

Heavy libraries (torch, polars, duckdb) are imported inside the commands, so ``mldbg --help``
starts instantly.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ml_debugger import __version__
from ml_debugger.cli import demo, evaluate, export, extract, query, report, results, runs, show
from ml_debugger.cli._allocator import tune_allocator
from ml_debugger.cli._console import configure_logging, user_errors
from ml_debugger.cli._options import opt
from ml_debugger.cli._settings import load_settings

app = typer.Typer(
    name="mldbg",
    help="Find where your vision model is wrong, and label only what matters.\n\n"
    "Runs your PyTorch model over a dataset into one DuckDB file (outputs, features, stability), "
    "learns on labelled data when it is wrong (evaluate), scores unlabelled data (score), and picks "
    "what to label (query) for labelers (export). "
    "Defaults for any option can live in ./mldbg.yaml or in MLDBG_<COMMAND>_<OPTION> environment "
    "variables (e.g. MLDBG_EXTRACT_BATCH_SIZE=256; the database: MLDBG_DB).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "MLDBG"},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mldbg {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[
        bool, opt("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[int, opt("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
    quiet: Annotated[bool, opt("--quiet", "-q", help="Only errors; no progress bars.")] = False,
) -> None:
    """Find where your vision model is wrong, and label only what matters."""
    configure_logging(verbose, quiet)
    with user_errors():
        default_map = load_settings(ctx.command)
    if default_map:
        ctx.default_map = default_map


app.command("extract")(extract.extract_command)
app.add_typer(runs.app, name="runs")
app.command("evaluate")(evaluate.evaluate_command)
app.command("score")(evaluate.score_command)
app.add_typer(results.app, name="results")
app.command("query")(query.query_command)
app.add_typer(query.app, name="selections")
app.command("export")(export.export_command)
app.command("report")(report.report_command)
app.command("show")(show.show_command)
app.command("demo")(demo.demo_command)


def main() -> None:
    """Console-script entry point (and ``python -m ml_debugger``)."""
    tune_allocator()
    app()
