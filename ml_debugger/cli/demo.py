"""``mldbg demo [DIR]``: real digits and a small model, through extract, evaluate, score, query, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    task: Annotated[
        str, opt(help="classification (digits) or detection (procedural scenes and a tiny detector).")
    ] = "classification",
    json: JsonOption = False,
) -> None:
    """Build a demo from scikit-learn's real digits and run the whole flow on it.

    Writes class folders (train, val), an unlabelled pool, a small CNN (model.pt2) trained in
    seconds, and DIR/mldbg.duckdb with the runs `val` and `pool`, a result fitted on `val`, the
    pool's scores, a selection of hotspots to label, and its manifest DIR/to_label.csv.

    With --task detection it builds procedural scenes (coloured shapes on textured backgrounds;
    not photographs) and a tiny detector trained in seconds, and runs the same flow per box and
    per image, ending with a COCO file of the images to review.

    Example: mldbg demo mldbg-demo && cd mldbg-demo && mldbg runs
    """
    if task == "detection":
        _detection_demo(directory if directory != Path("mldbg-demo") else Path("mldbg-demo-det"), json)
        return
    if task != "classification":
        with user_errors():
            from ml_debugger.errors import UsageError

            raise UsageError(f"--task {task!r}: choose classification or detection")
    with user_errors():
        from ml_debugger.core.demo import MODEL_NAME, PREPROCESS, build_demo
        from ml_debugger.core.evaluate import evaluate
        from ml_debugger.core.export import export
        from ml_debugger.core.extract import ExtractRequest, extract
        from ml_debugger.core.query import QuerySpec, run_query
        from ml_debugger.core.scoring import score
        from ml_debugger.core.stability import StabilityConfig

        directory.mkdir(parents=True, exist_ok=True)
        status(f"building demo data and model in {directory} …")
        files = build_demo(directory)
        status(f"trained a small CNN: train accuracy {files.train_accuracy:.1%}, val {files.val_accuracy:.1%}")
        db = _fresh_db(directory)
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
        _print_summary(directory, summaries, result, scored, answer, manifest if exported else None)
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


def _fresh_db(directory: Path) -> Path:
    """The demo's database, without results: a re-run replaces the demo's runs (--overwrite),
    which a result using them would block."""
    from ml_debugger.core.store import Store

    db = directory / "mldbg.duckdb"
    if db.exists():
        with Store(db) as store:
            for old in store.result_names():
                store.drop_result(old)
    return db


def _print_summary(directory: Path, summaries: list, result: Any, scored: Any, answer: Any,
                   manifest: Path | None) -> None:  # fmt: skip
    print_json(
        {
            "directory": str(directory),
            "runs": [s.to_dict() for s in summaries],
            "result": result.name,
            "metrics": result.metrics,
            "pool_zones": scored.zones,
            "selection": answer.selection,
            "manifest": str(manifest) if manifest else None,
        }
    )


def _detection_demo(directory: Path, json: bool) -> None:
    with user_errors():
        from ml_debugger.core.detection.demo import MODEL_NAME, build_detection_demo
        from ml_debugger.core.detection.evaluate import evaluate_detection
        from ml_debugger.core.detection.extract import DetectionRequest, extract_detections
        from ml_debugger.core.export import export
        from ml_debugger.core.query import QuerySpec, run_query
        from ml_debugger.core.scoring import score

        directory.mkdir(parents=True, exist_ok=True)
        status(f"building procedural scenes and training the tiny detector in {directory} …")
        files = build_detection_demo(directory)
        (directory / "mldbg.yaml").write_text(
            "# Defaults for mldbg commands run in this folder (flags and MLDBG_* variables override them).\n"
            "extract:\n  task: detection\n  model_name: tinydet\n  mean: '0.5'\n  std: '0.5'\n"
        )
        db = _fresh_db(directory)
        common = dict(model=str(files.model), model_name=MODEL_NAME, mean=(0.5,) * 3, std=(0.5,) * 3, overwrite=True)
        summaries = []
        for name, folder, extra in (
            ("det_val", files.val, {"annotations": str(files.val_annotations)}),
            ("det_pool", files.pool, {"classes_file": str(files.classes)}),
        ):
            req = DetectionRequest(dataset=str(folder), name=name, **common, **extra)  # type: ignore[arg-type]
            with progress_bar(f"extract {name}", unit="images") as progress:
                summaries.append(extract_detections(req, db=db, progress=progress))
        status("evaluating det_val (per-box error model, zones, mAP) …")
        result = evaluate_detection("det_val", db=db).result
        scored = score("det_pool", db=db, result=result.name)
        bbox = {"bbox_filter": "score>=0.3", "aggregation": "max", "img_error_threshold": 0.5}
        answer = run_query(QuerySpec(n=50, bbox=bbox), db=db, run="det_pool")
        manifest = directory / "to_review.json"
        exported = export(answer.selection, db=db, fmt="coco", out=str(manifest)) if answer.selection else None
    if json:
        _print_summary(directory, summaries, result, scored, answer, manifest if exported else None)
        return
    from ml_debugger.core.wording import detection_lines

    out.print("procedural scenes (not photographs) and a tiny detector trained in seconds")
    for s in summaries:
        out.print(f"run [bold]{s.run}[/bold]: {s.n_samples:,} images, {s.n_boxes:,} boxes kept")
    out.print(f"result [bold]{result.name}[/bold] fitted on det_val")
    out.print(headline(result.metrics))
    for line in detection_lines(result.metrics):
        out.print(line)
    out.print(zone_table(scored.zones, "box zones of the unlabelled pool"))
    if exported:
        out.print(
            f"selected {exported.rows} pool images whose worst confident box has error_proba ≥ 0.5 as "
            f"{exported.selection}; COCO file to review: [bold]{manifest}[/bold]"
        )
    out.print(f"next: cd {directory} && mldbg show {result.name} && mldbg selections")
