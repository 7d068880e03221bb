"""``mldbg results``: list fitted results; ``mldbg results drop NAME`` deletes one."""

from __future__ import annotations

import json as _json
from typing import Annotated, Any

import typer

from ml_debugger.cli._console import drop_and_report, out, print_json, table, user_errors
from ml_debugger.cli._options import DbOption, JsonOption

# Below this terminal width the table shows name, model, AUROC and Δ best only (all in --json).
_WIDE = 120

app = typer.Typer(
    help="List results (name, model/version, task, eval run, created, headline metrics); "
    "`results drop NAME` deletes one.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def results_command(ctx: typer.Context, db: DbOption = None, json: JsonOption = False) -> None:
    """List the fitted results in the database.

    One row per `mldbg evaluate`, oldest first, with accuracy and error_proba's AUROC beside
    the best baseline's.

    Example: mldbg results --json
    """
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        from ml_debugger.core.store import Store

        with Store(db, read_only=True) as store:
            frame = store.list_results()
    rows = []
    for r in frame.iter_rows(named=True):
        m = _json.loads(r.pop("metrics"))
        best = m.get("best_baseline") or {}
        r.update(
            accuracy=m.get("accuracy"),
            auroc=m["detectors"]["error_proba"]["auroc"],
            best_baseline=best.get("name"),
            best_baseline_auroc=best.get("auroc"),
            errors=m.get("errors"),
            samples=m.get("samples"),
        )
        rows.append(r)
    if json:
        print_json(rows)
        return
    if not rows:
        out.print("no results yet; fit one with `mldbg evaluate LABELLED_RUN`")
        return
    cols = ["name", "model", "task", "eval run", "created", "accuracy", "AUROC", "Δ best"]
    body: list[tuple[Any, ...]] = [
        (r["name"], f"{r['model_name']}/{r['model_version']}", r["task"], r["eval_run"],
         r["created"].strftime("%Y-%m-%d"), f"{r['accuracy']:.1%}" if r["accuracy"] is not None else "–",
         "–" if r["auroc"] is None else f"{r['auroc']:.4f}",
         "–" if r["auroc"] is None or r["best_baseline_auroc"] is None
         else f"{r['auroc'] - r['best_baseline_auroc']:+.4f}")
        for r in rows
    ]  # fmt: skip
    if out.width < _WIDE:  # keep the names whole on narrow terminals: fewer columns
        keep = [0, 1, 6, 7]
        cols, body = [cols[i] for i in keep], [tuple(row[i] for i in keep) for row in body]
    out.print(table(None, cols, body, numeric=("accuracy", "AUROC", "Δ best"), no_wrap=("name", "created")))
    out.print("Δ best: error_proba's AUROC minus the best baseline's, out-of-fold (details: mldbg show NAME)")


@app.command("drop")
def drop_command(
    name: Annotated[str, typer.Argument(help="The result to delete.", show_default=False)],
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Delete a result, its fitted arrays and every score computed with it.

    The runs it was fitted on stay.

    Example: mldbg results drop digits_v1_classification_v1_20261204
    """
    drop_and_report("result", name, db, json)
