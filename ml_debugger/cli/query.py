"""``mldbg query`` selects samples to label; ``mldbg selections`` lists the saved answers."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from ml_debugger.cli._console import err, out, print_json, short_path, table, user_errors
from ml_debugger.cli._options import DbOption, JsonOption, opt


class Strategy(str, Enum):
    high_error_proba = "high_error_proba"
    low_error_proba = "low_error_proba"
    sort = "sort"
    random = "random"
    class_balanced = "class_balanced"
    diverse = "diverse"


# Rows printed in the terminal (all of them are in --json and in the saved selection).
_MAX_SHOWN = 50
# Below this terminal width the answer table leaves out the path column.
_WIDE = 110


def query_command(
    n: Annotated[int, opt("--n", "-n", help="How many samples to select.")] = 100,
    strategy: Annotated[Strategy, opt(help="How to rank the candidates.")] = Strategy.high_error_proba,
    zones: Annotated[
        str | None, opt(help="Only these zones (OR), e.g. hotspot,critical_hotspot.", show_default=False)
    ] = None,
    where: Annotated[
        list[str] | None,
        opt(
            "--where", help="Condition COLUMN OP VALUE (AND; repeatable), e.g. 'error_proba>=0.8'.", show_default=False
        ),
    ] = None,
    sort: Annotated[
        str | None, opt(help="Ranking column for --strategy sort: COLUMN[:asc|desc].", show_default=False)
    ] = None,
    min_value: Annotated[
        float | None, opt(help="random: lowest ranking value (error_proba) to draw from.", show_default=False)
    ] = None,
    max_value: Annotated[
        float | None, opt(help="random: highest ranking value (error_proba) to draw from.", show_default=False)
    ] = None,
    seed: Annotated[int, opt(help="Seed of the random strategy.")] = 0,
    min_per_class: Annotated[
        int | None, opt(help="class_balanced: quota per predicted class (default: n / classes).", show_default=False)
    ] = None,
    mix: Annotated[
        str | None,
        opt(help="Split n between strategies, e.g. 'high_error_proba=0.6,diverse=0.2,random=0.2'.", show_default=False),
    ] = None,
    run: Annotated[
        str | None, opt(help="Run to query (default: the most recently scored unlabelled run).", show_default=False)
    ] = None,
    result: Annotated[
        str | None, opt(help="Result whose scores to use (default: the newest matching one).", show_default=False)
    ] = None,
    include_selected: Annotated[bool, opt(help="Also pick samples already in earlier selections of the run.")] = False,
    img_error_threshold: Annotated[
        float | None,
        opt(help="Detection: only images whose aggregated box score is at least this.", show_default=False),
    ] = None,
    aggregation: Annotated[
        str | None, opt(help="Detection: mean, median or max of the boxes' scores per image.", show_default=False)
    ] = None,
    top_n: Annotated[
        int | None, opt(help="Detection: aggregate each image's N highest-scoring boxes only.", show_default=False)
    ] = None,
    bbox_filter: Annotated[
        list[str] | None,
        opt(help="Detection: box condition applied first (repeatable), e.g. 'error_proba>=0.3'.", show_default=False),
    ] = None,
    weight_column: Annotated[
        str | None, opt(help="Detection: weight of each box in mean/median, e.g. pred_size.", show_default=False)
    ] = None,
    target_column: Annotated[
        str | None,
        opt(
            help="Detection: error_proba, det_error_proba or cls_error_proba (default: error_proba).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, opt(help="Show the answer without saving it as a selection.")] = False,
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Select the samples worth labeling: filter by zones and conditions, rank, save.

    Filters apply first (zones OR, --where AND), then the strategy ranks; the answer is saved as
    a selection (sel-N) for `mldbg export`, and later queries skip what it holds.

    Example: mldbg query --zones hotspot,critical_hotspot --n 100
    """
    with user_errors():
        from ml_debugger.core.query import QuerySpec, parse_mix, run_query

        spec = QuerySpec(
            strategy="mix" if mix else strategy.value,
            n=n,
            zones=zones.split(",") if zones else [],
            conditions=list(where or []),
            sort=sort,
            min_value=min_value,
            max_value=max_value,
            seed=seed,
            min_per_class=min_per_class,
            mix=parse_mix(mix) if mix else None,
            include_selected=include_selected,
            bbox=_bbox(img_error_threshold, aggregation, top_n, bbox_filter, weight_column, target_column),
        )
        answer = run_query(spec, db=db, run=run, result=result, dry_run=dry_run)
    rows = answer.rows.drop("probs", "flip_classes", strict=False).to_dicts()
    if json:
        print_json(
            {
                "selection": answer.selection,
                "run": answer.run,
                "result": answer.result,
                "candidates": answer.candidates,
                "excluded_already_selected": answer.excluded,
                "notes": answer.notes,
                "items": rows,
            }
        )
        return
    for note in answer.notes:
        err.print(f"note: {note}", soft_wrap=True)
    if not rows:
        out.print(f"no samples selected from run {answer.run} ({answer.candidates} candidates); nothing saved")
        return
    shown = rows[:_MAX_SHOWN]
    cols = ["rank", "sample", "zone", "error_proba", "confidence", "predicted", "path"]
    body: list[tuple[Any, ...]] = [
        (r["rank"], r["sample_id"], r["zone"], f"{r['error_proba']:.3f}", f"{r['confidence']:.3f}", r["predicted"],
         short_path(r["path"]))
        for r in shown
    ]  # fmt: skip
    if out.width < _WIDE:  # the path goes first on narrow terminals (it is in --json and exports)
        cols, body = cols[:-1], [r[:-1] for r in body]
    more = f" (first {_MAX_SHOWN}; all with --json or `mldbg export`)" if len(rows) > len(shown) else ""
    out.print(table(f"{len(rows)} of {answer.candidates} candidates from run {answer.run}{more}", cols, body,
                    numeric=("rank", "error_proba", "confidence"), no_wrap=("zone", "sample")))  # fmt: skip
    if answer.excluded:
        out.print(f"{answer.excluded} candidate(s) left out: already in earlier selections (--include-selected)")
    if answer.selection:
        nxt = f"mldbg export {answer.selection} --format csv --out to_label.csv"
        out.print(f"saved as [bold]{answer.selection}[/bold]; next: {nxt}")
    else:
        out.print("dry run: not saved")


def _bbox(threshold: float | None, aggregation: str | None, top_n: int | None, bbox_filter: list[str] | None,
          weight_column: str | None, target_column: str | None) -> dict[str, Any] | None:  # fmt: skip
    """The BBoxStrategy options given on the command line (None when none was)."""
    given = {
        "img_error_threshold": threshold,
        "aggregation": aggregation,
        "top_n": top_n,
        "bbox_filter": list(bbox_filter) if bbox_filter else None,
        "weight_column": weight_column,
        "target_column": target_column,
    }
    chosen = {k: v for k, v in given.items() if v is not None}
    return chosen or None


app = typer.Typer(
    help="List saved selections (query answers); `selections drop ID` deletes one.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def selections_command(
    ctx: typer.Context,
    run: Annotated[str | None, opt(help="Only selections of this run.", show_default=False)] = None,
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """List the saved selections, oldest first.

    Each is one query's ordered answer with the strategy that chose it.

    Example: mldbg selections --json
    """
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        from ml_debugger.core.store import Store

        with Store(db, read_only=True) as store:
            frame = store.list_selections(run)
    if json:
        import json as _json

        print_json([{**r, "strategy": _json.loads(r["strategy"])} for r in frame.to_dicts()])
        return
    if frame.height == 0:
        out.print("no selections yet; make one with `mldbg query`")
        return
    import json as _json

    rows = []
    for r in frame.to_dicts():
        s = _json.loads(r["strategy"])
        how = s["strategy"] + (f" zones={','.join(s['zones'])}" if s.get("zones") else "")
        how += "".join(f" where {c}" for c in s.get("conditions") or [])
        rows.append((r["id"], r["run"], r["n"], how, r["created"].strftime("%Y-%m-%d %H:%M")))
    out.print(table(None, ["id", "run", "samples", "strategy", "created"], rows, numeric=("samples",),
                    no_wrap=("id", "created")))  # fmt: skip


@app.command("drop")
def drop_command(
    selection: Annotated[str, typer.Argument(help="The selection to delete, e.g. sel-3.", show_default=False)],
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Delete a saved selection; its samples can be selected again.

    The run and its scores stay.

    Example: mldbg selections drop sel-3
    """
    from ml_debugger.cli._console import drop_and_report

    drop_and_report("selection", selection, db, json)
