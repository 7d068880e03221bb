"""`mldbg report` and `mldbg show RESULT --heatmap` on the real scored digits, and the report
rendered in real headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ml_debugger.cli.app import app
from ml_debugger.core.demo import DemoFiles
from ml_debugger.core.store import Store
from ml_debugger.core.wording import coverage_line
from tests import browser
from tests.conftest import PRE_FLAGS

runner = CliRunner()


def _result(db: Path) -> str:
    with Store(db, read_only=True) as store:
        return store.result_names()[-1]


@pytest.fixture(scope="module")
def reports(scored: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The report of the result (its labelled run) and of the scored pool."""
    out = tmp_path_factory.mktemp("reports")
    paths = {"result": out / "result.html", "pool": out / "pool.html"}
    r = runner.invoke(app, ["report", _result(scored), "--db", str(scored), "--out", str(paths["result"]), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["run"] == "val" and summary["samples"] == 718 and summary["bytes"] == paths["result"].stat().st_size
    r = runner.invoke(app, ["report", "--run", "pool", "--db", str(scored), "--out", str(paths["pool"])])
    assert r.exit_code == 0, r.output
    assert "pool.html" in r.output and "630 samples" in r.output
    return paths


def _sections(page: str) -> list[str]:
    return re.findall(r'<section id="([a-z-]+)"', page)


def test_the_result_report_is_one_self_contained_file(reports: dict[str, Path], scored: Path) -> None:
    page = reports["result"].read_text(encoding="utf-8")
    with Store(scored, read_only=True) as store:
        metrics = store.require_result(_result(scored)).metrics
    assert html.escape(coverage_line(metrics) or "missing") in page  # the coverage promise, or why it is empty
    # Nothing is fetched at view time: no script, stylesheet or image from a URL.
    assert not re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(?:https?:)?//', page)
    assert page.count("<script") >= 5 and "Plotly.newPlot" in page
    assert _sections(page) == [
        "overview", "zones", "heatmaps", "calibration", "distribution", "confusion", "classes", "gallery"
    ]  # fmt: skip
    for text in ("kNN Trust Score", "DOCTOR", "critical_hotspot", "hotspot_stability",
                 "chart-heatmap-confidence-stability", "chart-heatmap-error_proba-ood", "out-of-fold"):  # fmt: skip
        assert text in page, text
    # The gallery embeds downscaled thumbnails of real images.
    thumbs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert thumbs and all(len(t) < 4000 for t in thumbs)


def test_a_pool_report_compares_zone_shares_and_ood_with_the_labelled_run(reports: dict[str, Path]) -> None:
    page = reports["pool"].read_text(encoding="utf-8")
    sections = _sections(page)
    assert "shift" in sections and "predicted" in sections
    assert "confusion" not in sections and "calibration" not in sections  # the pool is unlabelled
    assert "flagged OOD" in page and "mean error_proba (no labels" in page
    assert "an unlabelled run" in page and "expected errors" in page


def test_a_labelled_held_out_run_gets_held_out_metrics(scored: Path, demo: DemoFiles, tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    shutil.copy(scored, db)
    manifest = tmp_path / "pool_labelled.csv"
    rows = (demo.root / "pool_labels.csv").read_text().splitlines()[1:]
    manifest.write_text("path,label\n" + "".join(f"{demo.pool / r.split(',')[0]},{r.split(',')[1]}\n" for r in rows))
    common = ["--db", str(db), "--model", str(demo.model), "--model-name", "digits", *PRE_FLAGS]
    r = runner.invoke(app, ["extract", str(manifest), "--name", "held", "--classes", str(demo.classes),
                            "--stability", "4", *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["score", "held", "--db", str(db)]).exit_code == 0
    out = tmp_path / "held.html"
    r = runner.invoke(app, ["report", "--run", "held", "--db", str(db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    assert "held out" in page and "error detection on 630 labelled samples" in page
    assert {"confusion", "calibration", "classes", "shift"} <= set(_sections(page))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no result named 'nope'"),
        (["--run", "nope"], "no run named 'nope'"),
        (["--out", "missing/dir/r.html"], "folder missing/dir does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(scored: Path, clean_env: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["report", "--db", str(scored), *args])
    assert r.exit_code != 0 and (r.exception is None or isinstance(r.exception, SystemExit))
    assert message in r.output and "Traceback" not in r.output
    assert not list(clean_env.rglob("*.html"))


def test_a_run_without_scores_says_which_command_to_run(extracted: Path, clean_env: Path) -> None:
    r = runner.invoke(app, ["report", "--run", "pool", "--db", str(extracted)])
    assert r.exit_code != 0 and "run 'pool' has no scores yet; score it first with `mldbg score pool`" in r.output
    r = runner.invoke(app, ["report", "--db", str(extracted)])
    assert r.exit_code != 0 and "no results in" in r.output and "mldbg evaluate" in r.output
    assert not list(clean_env.rglob("*.html"))


def test_terminal_heatmap(scored: Path) -> None:
    name = _result(scored)
    r = runner.invoke(app, ["show", name, "--db", str(scored), "--heatmap"])
    assert r.exit_code == 0, r.output
    assert "observed error rate over confidence" in r.output and "stability" in r.output and "≥.99" in r.output
    r = runner.invoke(app, ["show", name, "--db", str(scored), "--heatmap", "--class", "8", "--json"])
    assert r.exit_code == 0, r.output
    grid = json.loads(r.stdout)
    assert grid["class"] == "8" and grid["run"] == "val"
    with Store(scored, read_only=True) as store:
        predicted_8 = int((store.read_scores(name, "val")["pred"] == 8).sum())
    assert sum(map(sum, grid["count"])) == predicted_8
    r = runner.invoke(app, ["show", "pool", "--db", str(scored), "--heatmap", "--axes", "error_proba-ood"])
    assert r.exit_code == 0 and "mean error_proba (predicted error rate) over error_proba" in r.output
    r = runner.invoke(app, ["show", name, "--db", str(scored), "--heatmap", "--class", "eight"])
    assert r.exit_code != 0 and "--class 'eight' is not a class of result" in r.output


@pytest.fixture(scope="module")
def chromium() -> str:
    path = browser.chromium()
    if path is None:
        if os.environ.get("MLDBG_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (MLDBG_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("chromium not installed (Debian: apt-get install chromium); .ci/run installs it")
    return path


@pytest.mark.parametrize("which", ["result", "pool"])
def test_reports_render_in_headless_chromium(
    chromium: str, reports: dict[str, Path], tmp_path: Path, which: str
) -> None:
    page = reports[which]
    rendered = browser.dump_dom(page)
    assert rendered.console == [], rendered.console  # no script error, no console message at all
    dom = rendered.dom
    assert 'data-report-status="ok"' in dom
    drawn = int(re.search(r'data-charts="(\d+)"', dom).group(1))  # type: ignore[union-attr]
    assert drawn == page.read_text(encoding="utf-8").count('class="plotly-graph-div"') >= 3
    # The heatmaps were drawn (plotly's heatmap layer), and the zone table is on the page.
    heatmaps = dom[dom.index('<section id="heatmaps"') :]
    assert heatmaps[: heatmaps.index("</section>")].count('class="hm"') == 2
    assert re.search(r"<td>critical_hotspot</td>", dom)
    png = tmp_path / "shot.png"
    assert browser.screenshot(page, png, height=1600) == []
    assert png.stat().st_size > 50_000  # a real picture, not a blank page
