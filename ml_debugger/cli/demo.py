"""``mldbg demo [DIR]``: real digits and a small model, through extract, evaluate, score, query, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ml_debugger.cli._console import out, print_json, progress_bar, status, user_errors
from ml_debugger.cli._options import JsonOption, opt
from ml_debugger.cli._render import zone_table
from ml_debugger.core.wording import coverage_line, headline


def demo_command(
    directory: Annotated[Path, typer.Argument(help="Folder for the demo data, model and database.")] = Path(
        "mldbg-demo"
    ),
    stability: Annotated[int, opt(help="Perturbed copies per pool sample.")] = 4,
    json: JsonOption = False,
) -> None:
    """Build a demo from scikit-learn's real digits and run the whole flow on it.

    Writes class folders (train, val), an unlabelled pool, a small CNN (model.pt2) trained in
    seconds, and DIR/mldbg.duckdb with the runs `val` and `pool`, a result fitted on `val`, the
    pool's scores, a selection of hotspots to label, and its manifest DIR/to_label.csv.

    Example: mldbg demo mldbg-demo && cd mldbg-demo && mldbg runs
    """
    with user_errors():
        from ml_debugger.core.demo import MODEL_NAME, PREPROCESS, build_demo
        from ml_debugger.core.evaluate import evaluate
        from ml_debugger.core.export import export
        from ml_debugger.core.extract import ExtractRequest, extract
        from ml_debugger.core.query import QuerySpec, run_query
        from ml_debugger.core.scoring import score
        from ml_debugger.core.stability import StabilityConfig
        from ml_debugger.core.store import Store

        directory.mkdir(parents=True, exist_ok=True)
        status(f"building demo data and model in {directory} …")
        files = build_demo(directory)
        status(f"trained a small CNN: train accuracy {files.train_accuracy:.1%}, val {files.val_accuracy:.1%}")
        db = directory / "mldbg.duckdb"
        if db.exists():  # a re-run replaces the demo's runs, so first its results
            with Store(db) as store:
                for old in store.result_names():
                    store.drop_result(old)
        common = dict(model=str(files.model), model_name=MODEL_NAME, image_size=PREPROCESS.image_size,
                      channels=1, mean=PREPROCESS.mean, std=PREPROCESS.std, overwrite=True)  # fmt: skip
        summaries = []
        for name, folder, extra in (
            ("val", files.val, {"stability": StabilityConfig(k=stability)}),
            (
                "pool",
                files.pool,
                {"classes_file": str(files.classes), "stability": StabilityConfig(k=stability)},
            ),
        ):
            req = ExtractRequest(dataset=str(folder), name=name, **common, **extra)  # type: ignore[arg-type]
            with progress_bar(f"extract {name}") as progress:
                summaries.append(extract(req, db=db, progress=progress))
        status("evaluating val (error model, zones) …")
        result = evaluate("val", db=db, config=directory / "evaluate.yaml").result
        scored = score("pool", db=db, result=result.name)
        status("selecting hotspots and critical hotspots to label …")
        answer = run_query(QuerySpec(zones=["hotspot", "critical_hotspot"], n=50), db=db, run="pool")
        manifest = directory / "to_label.csv"
        exported = export(answer.selection, db=db, fmt="csv", out=str(manifest)) if answer.selection else None
    if json:
        print_json(
            {
                "directory": str(directory),
                "runs": [s.to_dict() for s in summaries],
                "result": result.name,
                "metrics": result.metrics,
                "pool_zones": scored.zones,
                "selection": answer.selection,
                "manifest": str(manifest) if exported else None,
            }
        )
        return
    for s in summaries:
        acc = f", accuracy {s.accuracy:.1%}" if s.accuracy is not None else " (unlabelled)"
        out.print(f"run [bold]{s.run}[/bold]: {s.n_samples:,} samples{acc}")
    out.print(f"result [bold]{result.name}[/bold] fitted on val")
    out.print(headline(result.metrics))
    line = coverage_line(result.metrics)
    if line:
        out.print(line)
    out.print(zone_table(scored.zones, "zones of the unlabelled pool"))
    if exported:
        out.print(
            f"selected {exported.rows} hotspot/critical_hotspot pool images as {exported.selection}; "
            f"manifest for labelers: [bold]{manifest}[/bold]"
        )
    out.print(f"next: cd {directory} && mldbg show {result.name} && mldbg selections")
