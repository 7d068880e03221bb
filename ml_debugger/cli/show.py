"""``mldbg show NAME``: everything about one run."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ml_debugger.cli._console import fmt, kv_table, out, print_json, table, user_errors
from ml_debugger.cli._options import DbOption, JsonOption

# Skipped files listed in the terminal (all of them are in --json).
_MAX_SKIPPED_SHOWN = 20


def show_command(
    name: Annotated[str, typer.Argument(help="A run name (see `mldbg runs`).", show_default=False)],
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Show one run: counts, accuracy, class distribution, stability, skipped files.

    Accuracy and per-class accuracy appear when the run is labelled.

    Example: mldbg show val
    """
    with user_errors():
        from ml_debugger.core.store import Store

        with Store(db, read_only=True) as store:
            run = store.require_run(name)
            details: dict[str, Any] = {
                "run": {k: v for k, v in run.__dict__.items()},
                "samples": store.count("samples", name),
                "skipped": store.count("skipped", name),
                "accuracy": store.accuracy(name) if run.labelled else None,
                "stability": store.stability_summary(name),
                "classes": store.class_table(name).to_dicts(),
                "skipped_files": store.read_skipped(name).to_dicts(),
            }
    for row in details["classes"]:
        row["name"] = run.classes[row["cls"]] if 0 <= row["cls"] < len(run.classes) else str(row["cls"])
    if json:
        print_json(details)
        return
    done = "" if run.status == "complete" else f" ({run.status}: re-run the extract command to resume)"
    out.print(f"[bold]run {run.name}[/bold]{done}")
    summary = [
        ("task", run.task),
        ("model", f"{run.model_name}/{run.model_version} ({run.model_format}) {run.model_path}"),
        ("dataset", f"{run.dataset_path} ({run.dataset_format})"),
        ("samples", fmt(details["samples"])),
        ("skipped", fmt(details["skipped"])),
        ("labelled", fmt(run.labelled)),
        ("accuracy", f"{details['accuracy']:.2%}" if details["accuracy"] is not None else "–"),
        ("classes", fmt(len(run.classes))),
        ("feature", f"{run.feature_layer} (dim {run.feature_dim})"),
        ("stability", f"K={run.stability_k}" if run.stability_k else "off (extract with --stability K)"),
        ("created", fmt(run.created)),
    ]
    st = details["stability"]
    if run.stability_k and st["mean_stability"] is not None:
        summary.append(("mean stability", f"{st['mean_stability']:.3f}"))
        summary.append(("flipped under perturbation", f"{st['share_flipped']:.1%} of samples"))
    out.print(kv_table(summary))
    cols = ["class", "name", "predicted"] + (["labelled", "accuracy"] if run.labelled else [])
    rows = [
        [r["cls"], r["name"], r["predicted"]]
        + ([r["labelled"], f"{r['accuracy']:.1%}" if r["accuracy"] is not None else "–"] if run.labelled else [])
        for r in details["classes"]
    ]
    out.print(table("classes", cols, rows, numeric=("class", "predicted", "labelled", "accuracy")))
    skipped = details["skipped_files"]
    if skipped:
        shown = skipped[:_MAX_SKIPPED_SHOWN]
        more = f" (first {_MAX_SKIPPED_SHOWN} of {len(skipped)}; all with --json)" if len(skipped) > len(shown) else ""
        out.print(table(f"skipped files{more}", ["sample", "reason"], [(s["sample_id"], s["reason"]) for s in shown]))
