"""``mldbg report``: one self-contained HTML file reviewing a result, or a scored run under it.

``load`` (data.py) reads the scored rows; ``aggregates`` reduces them to small arrays;
``sections`` turns those into HTML sections, per task; ``page`` wraps them with the inlined
plotly.js. The terminal heatmap (``mldbg show RESULT --heatmap``) uses ``heatmap``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ml_debugger.core.detection import DETECTION_TASKS
from ml_debugger.errors import UsageError

if TYPE_CHECKING:
    from ml_debugger.core.report.aggregates import Grid


@dataclass(frozen=True)
class ReportSummary:
    out: str
    bytes: int
    result: str
    run: str
    samples: int
    sections: list[str]


def check_out(out: str | Path) -> Path:
    """The output path, refused before any work when its folder is missing or it is a folder."""
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name, e.g. {path / 'report.html'}")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: folder {path.parent} does not exist; create it or choose another path")
    return path


def build_report(
    result: str | None = None,
    *,
    run: str | None = None,
    out: str | Path = "report.html",
    db: str | Path | None = None,
    gallery: int | None = None,
) -> ReportSummary:
    """Write the report of ``run`` under ``result`` (default: the result's labelled run; with
    neither, the newest result) to ``out``, whole or not at all."""
    from ml_debugger.core.export import write_atomic
    from ml_debugger.core.report.data import load
    from ml_debugger.core.report.page import render
    from ml_debugger.core.report.sections import GALLERY, Options, build_sections
    from ml_debugger.core.store import Store

    path = check_out(out)
    with Store(db, read_only=True) as store:
        data = load(store, result, run)
    sections = build_sections(data, Options(gallery=GALLERY if gallery is None else gallery))
    title = f"mldbg report: {data.result.name}" + ("" if data.is_eval_run else f" on {data.run.name}")
    subtitle = (
        f"model {data.result.model_name}/{data.result.model_version} · run {data.run.name} "
        f"({data.frame.height:,} samples, {'labelled' if data.labelled else 'unlabelled'}) · "
        f"labelled run {data.result.eval_run}"
    )
    page = render(title, subtitle, sections)

    def write(fh: IO[str]) -> None:
        fh.write(page)

    write_atomic(path, write)
    return ReportSummary(
        out=str(path),
        bytes=path.stat().st_size,
        result=data.result.name,
        run=data.run.name,
        samples=data.frame.height,
        sections=[s.id for s in sections],
    )


@dataclass(frozen=True)
class HeatmapView:
    grid: Grid
    result: str
    run: str


def heatmap(
    result: str | None = None,
    *,
    run: str | None = None,
    kind: str = "confidence-stability",
    class_name: str | None = None,
    db: str | Path | None = None,
) -> HeatmapView:
    """One heatmap grid (all classes, or one predicted class) for the terminal."""
    import difflib

    from ml_debugger.core.report import aggregates as agg
    from ml_debugger.core.report.data import load
    from ml_debugger.core.store import Store

    if kind not in agg.HEATMAPS:
        raise UsageError(f"unknown heatmap {kind!r}; choose one of: {', '.join(agg.HEATMAPS)}")
    with Store(db, read_only=True) as store:
        data = load(store, result, run)
    if class_name is not None and class_name not in data.classes:
        close = difflib.get_close_matches(class_name, data.classes, n=3, cutoff=0.5)
        hint = f"did you mean: {', '.join(close)}?" if close else f"classes: {', '.join(data.classes[:20])}"
        raise UsageError(f"--class {class_name!r} is not a class of result {data.result.name}; {hint}")
    spec = agg.HEATMAPS[kind]
    grids = agg.grids(data.frame, spec, data.reference, data.classes)
    if grids is None and data.task in DETECTION_TASKS:
        raise UsageError("detection runs have no stability; use --axes error_proba-ood")
    if grids is None:
        raise UsageError(
            f"run {data.run.name!r} has no stability (extracted without --stability K); "
            "try --axes error_proba-ood, or re-extract with --stability 4 --overwrite"
        )
    if class_name is not None and class_name not in grids:
        raise UsageError(f"no sample of run {data.run.name!r} is predicted {class_name!r}")
    return HeatmapView(grids[class_name], data.result.name, data.run.name)
