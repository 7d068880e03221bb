"""``mldbg evaluate RUN`` fits a result; ``mldbg score RUN`` applies one to another run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ml_debugger.cli._console import err, out, print_json, status, user_errors
from ml_debugger.cli._options import DbOption, JsonOption, opt
from ml_debugger.cli._render import print_evaluation, zone_table
from ml_debugger.core.detection import DETECTION_TASKS


def evaluate_command(
    run: Annotated[str, typer.Argument(help="A labelled run (see `mldbg runs`).", show_default=False)],
    result_name: Annotated[
        str | None,
        opt(help="Name of the result (default: {model}_{version}_classification_v1_{YYYYMMDD}).", show_default=False),
    ] = None,
    reference: Annotated[
        str | None,
        opt(help="Labelled run used as the kNN bank, e.g. the training set (default: RUN itself).", show_default=False),
    ] = None,
    config: Annotated[
        Path | None, opt(help="YAML config with evaluate/zones sections (see configs/default.yaml).")
    ] = None,
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Learn from a labelled run when the model is wrong, and store it as a named result.

    Prints error_proba's AUROC, AUPR and FPR@95 beside the free baselines (max softmax, entropy,
    DOCTOR, energy, kNN Trust Score), all out-of-fold, and the zone table with error rates.

    Example: mldbg evaluate val
    """
    with user_errors():
        from ml_debugger.core.evaluate import evaluate
        from ml_debugger.core.store import Store

        with Store(db, read_only=True) as store:
            task = store.require_run(run).task
        status(f"evaluating {run} …")
        if task in DETECTION_TASKS:
            from ml_debugger.core.detection.evaluate import evaluate_detection

            if reference:
                from ml_debugger.errors import UsageError

                raise UsageError("--reference is for classification runs; a detection result uses its own boxes")
            summary: Any = evaluate_detection(run, db=db, name=result_name, config=config)
        else:
            summary = evaluate(run, db=db, name=result_name, reference=reference, config=config)
    info = summary.result
    if json:
        print_json({"result": info.name, "eval_run": info.eval_run, "metrics": info.metrics})
        return
    for note in summary.notes:
        err.print(f"note: {note}", soft_wrap=True)
    out.print(f"result [bold]{info.name}[/bold] (model {info.model_name}/{info.model_version}, run {info.eval_run})")
    print_evaluation(info.metrics)
    out.print(f"next: `mldbg score RUN` to score an unlabelled run with {info.name}")


def score_command(
    run: Annotated[str, typer.Argument(help="The run to score (see `mldbg runs`).", show_default=False)],
    result: Annotated[
        str | None, opt(help="Result to apply (default: the newest one for the run's model).", show_default=False)
    ] = None,
    force: Annotated[bool, opt(help="Recompute even when scores are cached.")] = False,
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Give every sample of a run an error_proba, an ood_score and a zone.

    Uses the newest result of the same model version and classes unless --result says
    otherwise; scores are cached per (result, run), and scoring again changes nothing.

    Example: mldbg score pool
    """
    with user_errors():
        from ml_debugger.core.scoring import score

        summary = score(run, db=db, result=result, force=force)
    if json:
        print_json(summary.__dict__)
        return
    how = "cached scores" if summary.cached else "scored"
    out.print(f"run [bold]{summary.run}[/bold]: {how} {summary.samples:,} samples with {summary.result}")
    out.print(zone_table(summary.zones, f"zones of {summary.run}"))
