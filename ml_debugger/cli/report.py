"""``mldbg report``: a self-contained HTML review of a result, or of a scored run under it."""

from __future__ import annotations

from typing import Annotated

import typer

from ml_debugger.cli._console import out, print_json, status, user_errors
from ml_debugger.cli._options import DbOption, JsonOption, opt


def report_command(
    result: Annotated[
        str | None,
        typer.Argument(help="Result to review (see `mldbg results`; default: the newest).", show_default=False),
    ] = None,
    run: Annotated[
        str | None,
        opt(help="A scored run to review under the result (default: the result's labelled run).", show_default=False),
    ] = None,
    out_path: Annotated[
        str | None,
        opt("--out", "-o", help="HTML file (default: RESULT.html; RUN.html with --run).", show_default=False),
    ] = None,
    gallery: Annotated[int, opt(help="Samples per gallery zone (0: no gallery).", min=0)] = 24,
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Write one HTML file that reviews a result: metrics, zones, heatmaps, the worst samples.

    Beside the metrics, the baselines; then the zones, heatmaps, reliability, the confusion
    matrix and a gallery of the worst samples. The file is self-contained (plotly.js and
    thumbnails inlined, about 5 MB) and opens offline. With --run, it reviews a scored run
    under the result instead, with its zone shares and OOD share against the labelled run (a
    distribution-shift signal).

    Example: mldbg report --run pool --out pool.html
    """
    with user_errors():
        from ml_debugger.core.report import build_report, check_out

        target = out_path or f"{run or result or 'report'}.html"
        check_out(target)
        status("writing the report …")
        summary = build_report(result, run=run, out=target, db=db, gallery=gallery)
    if json:
        print_json(summary.__dict__)
        return
    size = summary.bytes / 1e6
    out.print(
        f"wrote [bold]{summary.out}[/bold] ({size:.1f} MB): result {summary.result}, run {summary.run} "
        f"({summary.samples:,} samples); open it in a browser"
    )
