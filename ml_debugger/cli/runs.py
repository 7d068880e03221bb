"""``mldbg runs``: list the runs in the store; ``mldbg runs drop NAME`` deletes one."""

from __future__ import annotations

from typing import Annotated

import typer

from ml_debugger.cli._console import drop_and_report, out, print_json, short_path, table, user_errors
from ml_debugger.cli._options import DbOption, JsonOption

app = typer.Typer(
    help="List runs (name, task, model, dataset, samples, labelled, skipped, created); `runs drop NAME` deletes one.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def runs_command(ctx: typer.Context, db: DbOption = None, json: JsonOption = False) -> None:
    """List the runs in the database.

    One row per extraction, oldest first, with its sample and skipped counts.

    Example: mldbg runs --json
    """
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        from ml_debugger.core.store import Store

        with Store(db, read_only=True) as store:
            frame = store.list_runs()
    if json:
        print_json(frame.to_dicts())
        return
    if frame.height == 0:
        out.print("no runs yet; create one with `mldbg extract DATASET --model MODEL`")
        return
    cols = ["name", "task", "model", "dataset", "samples", "labelled", "skipped", "created"]
    rows = [
        (r["name"] if r["status"] == "complete" else f"{r['name']} ({r['status']})", r["task"],
         f"{r['model_name']}/{r['model_version']}", short_path(r["dataset"]), r["samples"], r["labelled"],
         r["skipped"], r["created"].strftime("%Y-%m-%d %H:%M"))
        for r in frame.iter_rows(named=True)
    ]  # fmt: skip
    out.print(table(None, cols, rows, numeric=("samples", "skipped")))


@app.command("drop")
def drop_command(
    name: Annotated[str, typer.Argument(help="The run to delete.", show_default=False)],
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Delete a run and everything stored for it.

    Samples, outputs, features and skipped records go in one transaction.

    Example: mldbg runs drop pool
    """
    drop_and_report("run", name, db, json)
