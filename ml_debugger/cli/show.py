"""``mldbg show NAME``: everything about one run or one result."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from ml_debugger.cli._console import fmt, kv_table, out, print_json, table, user_errors
from ml_debugger.cli._options import DbOption, JsonOption, opt
from ml_debugger.core.detection import DETECTION_TASKS, unit_of


class HeatmapAxes(str, Enum):
    confidence_stability = "confidence-stability"
    error_proba_ood = "error_proba-ood"


# Skipped files listed in the terminal (all of them are in --json).
_MAX_SKIPPED_SHOWN = 20


def show_command(
    name: Annotated[
        str, typer.Argument(help="A run (see `mldbg runs`) or a result (see `mldbg results`).", show_default=False)
    ],
    heatmap: Annotated[
        bool, opt(help="Draw the heatmap of error rate over confidence × stability (or --axes) instead.")
    ] = False,
    axes: Annotated[
        HeatmapAxes, opt(help="With --heatmap: the two columns binned.")
    ] = HeatmapAxes.confidence_stability,
    class_name: Annotated[
        str | None, opt("--class", help="With --heatmap: one predicted class only.", show_default=False)
    ] = None,
    scored_run: Annotated[
        str | None,
        opt(
            "--run",
            help="With --heatmap: a scored run (default: the result's labelled run).",
            show_default=False,
        ),
    ] = None,
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Show one run (counts, accuracy, classes, skipped files) or one result (metrics, zones).

    A result shows its metrics beside the baselines, thresholds, zone table and per-class table.
    With --heatmap, a result (or a scored run) is drawn as a heatmap of its observed error rate
    (or, unlabelled, its mean error_proba) with sample counts, overall or for one --class.

    Example: mldbg show val; mldbg show my_result --heatmap --class 8
    """
    if heatmap:
        _show_heatmap(name, run=scored_run, axes=axes.value, class_name=class_name, db=db, json=json)
        return
    with user_errors():
        from ml_debugger.core.store import Store

        with Store(db, read_only=True) as store:
            if store.get_run(name) is None and store.get_result(name) is not None:
                _show_result(store.require_result(name), json)
                return
            if store.get_run(name) is None:
                _not_found(store, name)
            run = store.require_run(name)
            if run.task in DETECTION_TASKS:
                _show_detection_run(store, run, json)
                return
            details: dict[str, Any] = {
                "run": {k: v for k, v in run.__dict__.items()},
                "samples": store.count("samples", name),
                "skipped": store.count("skipped", name),
                "accuracy": store.accuracy(name) if run.labelled else None,
                "stability": store.stability_summary(name),
                "classes": store.class_table(name).to_dicts(),
                "skipped_files": store.read_skipped(name).to_dicts(),
                "scored_by": [p for p in store.scored_pairs().to_dicts() if p["run"] == name],
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
    for pair in details["scored_by"]:
        kind = "out-of-fold scores" if pair["out_of_fold"] else "scores"
        out.print(f"{kind} of {fmt(pair['n'])} samples by result {pair['result']} ({fmt(pair['scored'])})")


def _show_detection_run(store: Any, run: Any, json: bool) -> None:
    classes = store.detection_class_table(run.name).to_dicts()
    for row in classes:
        row["name"] = run.classes[row["cls"]] if 0 <= row["cls"] < len(run.classes) else str(row["cls"])
    st = run.settings
    details = {
        "run": dict(run.__dict__),
        "images": store.count("samples", run.name),
        "skipped": store.count("skipped", run.name),
        "boxes": store.count("boxes", run.name),
        "gt_boxes": store.count("gt_boxes", run.name),
        "classes": classes,
        "skipped_files": store.read_skipped(run.name).to_dicts(),
    }
    if json:
        print_json(details)
        return
    done = "" if run.status == "complete" else f" ({run.status}: re-run the extract command to resume)"
    out.print(f"[bold]run {run.name}[/bold]{done}")
    per_image = details["boxes"] / max(1, details["images"])
    unit = unit_of(run.task)
    pc = f", points inside {st['pc_range']}" if st.get("pc_range") else ""
    out.print(
        kv_table(
            [
                ("task", run.task),
                ("model", f"{run.model_name}/{run.model_version} ({run.model_format}) {run.model_path}"),
                ("dataset", f"{run.dataset_path} ({run.dataset_format})"),
                (f"{unit}s", fmt(details["images"])),
                ("skipped", fmt(details["skipped"])),
                ("labelled", fmt(run.labelled)),
                ("boxes kept", f"{details['boxes']:,} ({per_image:.1f} per {unit})"),
                ("ground-truth boxes", fmt(details["gt_boxes"]) if run.labelled else "–"),
                (
                    "post-processing",
                    f"score ≥ {st['score_thresh']}, NMS IoU {st['iou_thresh']}, "
                    f"at most {st['max_detections']} per {unit}{pc}",
                ),
                ("feature", f"{run.feature_layer} (dim {run.feature_dim})"),
                ("created", fmt(run.created)),
            ]
        )
    )
    cols = ["class", "name", "boxes kept", *(["ground truth"] if run.labelled else [])]
    rows = [[r["cls"], r["name"], r["predicted"], *([r["ground_truth"]] if run.labelled else [])] for r in classes]
    out.print(table("classes", cols, rows, numeric=("class", "boxes kept", "ground truth")))


def _show_heatmap(name: str, *, run: str | None, axes: str, class_name: str | None, db: str | None, json: bool) -> None:
    from ml_debugger.cli._render import heatmap_legend, heatmap_table

    with user_errors():
        from ml_debugger.core.report import heatmap
        from ml_debugger.core.store import Store

        with Store(db, read_only=True) as store:
            is_result = store.get_result(name) is not None
            if not is_result and store.get_run(name) is None:
                _not_found(store, name)
        if is_result:
            view = heatmap(name, run=run, kind=axes, class_name=class_name, db=db)
        else:
            view = heatmap(None, run=name, kind=axes, class_name=class_name, db=db)
    if json:
        print_json({"result": view.result, "run": view.run, **view.grid.to_dict()})
        return
    out.print(heatmap_table(view))
    out.print(heatmap_legend(view))


def _signals(model: dict[str, Any]) -> list[str]:
    """The error model's signals (a detection result has one model per target, on one set)."""
    if "signals" in model:
        return list(model["signals"])
    first: dict[str, Any] = next(iter(model.get("targets", {}).values()), {})
    return list(first.get("signals", []))


def _not_found(store: Any, name: str) -> None:
    import difflib

    from ml_debugger.errors import NotFoundError

    runs = [r["name"] for r in store.list_runs().to_dicts()]
    results = store.result_names()
    close = difflib.get_close_matches(name, runs + results, n=3, cutoff=0.5)
    if close:
        hint = f"did you mean: {', '.join(close)}?"
    else:
        hint = f"runs: {', '.join(runs) or 'none'}; results: {', '.join(results) or 'none'}"
    raise NotFoundError(f"no run or result named {name!r} in {store.path}; {hint}")


def _show_result(info: Any, json: bool) -> None:
    from ml_debugger.cli._render import class_table, print_evaluation, threshold_table

    if json:
        print_json(info.__dict__)
        return
    out.print(f"[bold]result {info.name}[/bold]")
    m = info.metrics
    out.print(
        kv_table(
            [
                ("task", info.task),
                ("model", f"{info.model_name}/{info.model_version}"),
                ("method", f"{info.method} ({m.get('model_kind')})"),
                ("eval run", info.eval_run),
                ("kNN bank", info.reference_run),
                ("signals", ", ".join(_signals(info.model))),
                ("accuracy", f"{m['accuracy']:.2%}" if m.get("accuracy") is not None else "–"),
                ("created", fmt(info.created)),
            ]
        )
    )
    for note in m.get("notes", []):
        out.print(f"note: {note}")
    print_evaluation(m)
    out.print(threshold_table(info.thresholds))
    if m.get("classes"):
        out.print(class_table(m))
