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
        str,
        opt(
            help="classification (digits), detection (procedural scenes, tiny detector) or detection3d "
            "(procedural LiDAR frames, tiny BEV detector)."
        ),
    ] = "classification",
    json: JsonOption = False,
) -> None:
    """Build a demo from scikit-learn's real digits and run the whole flow on it.

    Writes class folders (train, val), an unlabelled pool, a small CNN (model.pt2) trained in
    seconds, and DIR/mldbg.duckdb with the runs `val` and `pool`, a result fitted on `val`, the
    pool's scores, a selection of hotspots to label, and its manifest DIR/to_label.csv.

    With --task detection it builds procedural scenes (coloured shapes on textured backgrounds;
    not photographs) and a tiny detector trained in seconds, and runs the same flow per box and
    per image, ending with a COCO file of the images to review. With --task detection3d it
    builds procedural LiDAR frames (ray-cast, not recorded) and a tiny BEV detector, and ends
    with a JSONL file of the frames to label.

    Example: mldbg demo mldbg-demo && cd mldbg-demo && mldbg runs
    """
    if task in ("detection", "detection3d"):
        default = Path("mldbg-demo-det" if task == "detection" else "mldbg-demo-3d")
        _detection_demo(directory if directory != Path("mldbg-demo") else default, json, task == "detection3d")
        return
    if task != "classification":
        with user_errors():
            from ml_debugger.errors import UsageError

            raise UsageError(f"--task {task!r}: choose classification, detection or detection3d")
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


def _detection_demo(directory: Path, json: bool, three_d: bool = False) -> None:
    with user_errors():
        from ml_debugger.core.detection.evaluate import evaluate_detection
        from ml_debugger.core.export import export
        from ml_debugger.core.query import QuerySpec, run_query
        from ml_debugger.core.scoring import score

        directory.mkdir(parents=True, exist_ok=True)
        if three_d:
            status(f"building procedural LiDAR frames and training the tiny BEV detector in {directory} …")
            runs, unit, extract = _lidar_runs(directory)
            val, pool, fmt, what = "lidar_val", "lidar_pool", "jsonl", "frames"
            manifest = directory / "frames_to_label.jsonl"
        else:
            status(f"building procedural scenes and training the tiny detector in {directory} …")
            runs, unit, extract = _scene_runs(directory)
            val, pool, fmt, what = "det_val", "det_pool", "coco", "images"
            manifest = directory / "to_review.json"
        db = _fresh_db(directory)
        summaries = []
        for req in runs:
            with progress_bar(f"extract {req.name}", unit=unit) as progress:
                summaries.append(extract(req, db=db, progress=progress))
        status(f"evaluating {val} (per-box error model, zones, mAP) …")
        result = evaluate_detection(val, db=db).result
        scored = score(pool, db=db, result=result.name)
        bbox = {"bbox_filter": "score>=0.3", "aggregation": "max", "img_error_threshold": 0.5}
        answer = run_query(QuerySpec(n=50, bbox=bbox), db=db, run=pool)
        exported = export(answer.selection, db=db, fmt=fmt, out=str(manifest)) if answer.selection else None
    if json:
        _print_summary(directory, summaries, result, scored, answer, manifest if exported else None)
        return
    from ml_debugger.core.wording import detection_lines

    if three_d:
        out.print("procedural LiDAR frames (ray-cast, not recorded) and a tiny BEV detector trained in seconds")
    else:
        out.print("procedural scenes (not photographs) and a tiny detector trained in seconds")
    for s in summaries:
        out.print(f"run [bold]{s.run}[/bold]: {s.n_samples:,} {unit}, {s.n_boxes:,} boxes kept")
    out.print(f"result [bold]{result.name}[/bold] fitted on {val}")
    out.print(headline(result.metrics))
    for line in detection_lines(result.metrics):
        out.print(line)
    out.print(zone_table(scored.zones, "box zones of the unlabelled pool"))
    if exported:
        out.print(
            f"selected {exported.rows} pool {what} whose worst confident box has error_proba ≥ 0.5 as "
            f"{exported.selection}; file to review: [bold]{manifest}[/bold]"
        )
    out.print(f"next: cd {directory} && mldbg show {result.name} && mldbg selections")


def _scene_runs(directory: Path) -> tuple[list[Any], str, Any]:
    """The 2D demo: its data, model and mldbg.yaml; the two extraction requests."""
    from ml_debugger.core.detection.demo import MODEL_NAME, build_detection_demo
    from ml_debugger.core.detection.extract import DetectionRequest, extract_detections

    files = build_detection_demo(directory)
    (directory / "mldbg.yaml").write_text(
        "# Defaults for mldbg commands run in this folder (flags and MLDBG_* variables override them).\n"
        "extract:\n  task: detection\n  model_name: tinydet\n  mean: '0.5'\n  std: '0.5'\n"
    )
    common = dict(model=str(files.model), model_name=MODEL_NAME, mean=(0.5,) * 3, std=(0.5,) * 3, overwrite=True)
    return (
        [
            DetectionRequest(dataset=str(files.val), name="det_val", annotations=str(files.val_annotations), **common),  # type: ignore[arg-type]
            DetectionRequest(dataset=str(files.pool), name="det_pool", classes_file=str(files.classes), **common),  # type: ignore[arg-type]
        ],
        "images",
        extract_detections,
    )


def _lidar_runs(directory: Path) -> tuple[list[Any], str, Any]:
    """The 3D demo: frames, the detector's weights and mldbg.yaml; the two extraction requests."""
    from ml_debugger.core.detection.demo3d import IOU_THRESH, MODEL, MODEL_NAME, SCORE_THRESH, build_lidar_demo
    from ml_debugger.core.detection.extract3d import Detection3DRequest, extract_frames

    files = build_lidar_demo(directory)
    (directory / "mldbg.yaml").write_text(
        "# Defaults for mldbg commands run in this folder (flags and MLDBG_* variables override them).\n"
        f"extract:\n  task: detection3d\n  model_name: {MODEL_NAME}\n  score_thresh: {SCORE_THRESH}\n"
        f"  iou_thresh: {IOU_THRESH}\n"
    )
    common = dict(model=MODEL, weights=str(files.weights), model_name=MODEL_NAME, score_thresh=SCORE_THRESH,
                  iou_thresh=IOU_THRESH, overwrite=True)  # fmt: skip
    return (
        [
            Detection3DRequest(dataset=str(files.val), name="lidar_val", **common),  # type: ignore[arg-type]
            Detection3DRequest(dataset=str(files.pool), name="lidar_pool", **common),  # type: ignore[arg-type]
        ],
        "frames",
        extract_frames,
    )
