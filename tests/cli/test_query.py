"""`mldbg query`, `selections` and `export` through the CLI on a real scored digits pool."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ml_debugger.cli.app import app

runner = CliRunner()


@pytest.fixture
def db(scored: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "q.duckdb"
    shutil.copy(scored, dst)
    return dst


def _query(db: Path, *args: str) -> dict:
    r = runner.invoke(app, ["query", "--db", str(db), "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_zone_query_is_saved_and_never_resent(db: Path) -> None:
    zones = "hotspot,critical_hotspot,recessive_hotspot"
    a = _query(db, "--zones", zones, "--n", "25")
    b = _query(db, "--zones", zones, "--n", "25")
    assert a["selection"] == "sel-1" and b["selection"] == "sel-2" and a["run"] == "pool"
    for ans in (a, b):
        assert 0 < len(ans["items"]) <= 25 and all(r["zone"] in zones.split(",") for r in ans["items"])
        assert [r["rank"] for r in ans["items"]] == list(range(1, len(ans["items"]) + 1))
    ids_a, ids_b = {r["sample_id"] for r in a["items"]}, {r["sample_id"] for r in b["items"]}
    assert not ids_a & ids_b and b["excluded_already_selected"] == len(ids_a)
    c = _query(db, "--zones", zones, "--n", "25", "--include-selected", "--dry-run")
    assert c["selection"] is None and {r["sample_id"] for r in c["items"]} == ids_a  # the same top 25
    r = runner.invoke(app, ["selections", "--db", str(db), "--json"])
    sels = json.loads(r.stdout)
    assert [s["id"] for s in sels] == ["sel-1", "sel-2"] and sels[0]["strategy"]["zones"] == zones.split(",")
    assert runner.invoke(app, ["selections", "drop", "sel-1", "--db", str(db)]).exit_code == 0
    d = _query(db, "--zones", zones, "--n", "25", "--dry-run")
    assert {r["sample_id"] for r in d["items"]} == ids_a  # dropped: selectable again


def test_conditions_sort_random_balanced_mix_through_the_cli(db: Path) -> None:
    w = _query(db, "--where", "error_proba>=0.3", "--where", "confidence>=0.5", "--n", "500", "--dry-run")
    assert all(r["error_proba"] >= 0.3 and r["confidence"] >= 0.5 for r in w["items"])
    s = _query(db, "--strategy", "sort", "--sort", "ood_score:desc", "--n", "10", "--dry-run")
    assert [r["ood_score"] for r in s["items"]] == sorted((r["ood_score"] for r in s["items"]), reverse=True)
    rnd = _query(db, "--strategy", "random", "--min-value", "0.1", "--max-value", "0.9", "--seed", "1", "--n", "20",
                 "--dry-run")  # fmt: skip
    assert all(0.1 <= r["error_proba"] <= 0.9 for r in rnd["items"])
    bal = _query(db, "--strategy", "class_balanced", "--min-per-class", "3", "--n", "40", "--dry-run")
    assert len({r["predicted"] for r in bal["items"]}) == 10
    mix = _query(db, "--mix", "high_error_proba=0.5,diverse=0.25,random=0.25", "--n", "20")
    assert len({r["sample_id"] for r in mix["items"]}) == 20
    r = runner.invoke(app, ["query", "--db", str(db), "--zones", "critical_hotspot", "--where", "confidence<0.1"])
    assert r.exit_code == 0 and "no samples selected" in r.output and "nothing saved" in r.output


def test_every_export_format_reads_back_the_same_rows(db: Path, tmp_path: Path) -> None:
    ans = _query(db, "--n", "30")
    sel = ans["selection"]
    ids = [r["sample_id"] for r in ans["items"]]
    out = {}
    for fmt in ("csv", "json", "jsonl", "labelstudio"):
        path = tmp_path / f"m.{fmt}"
        r = runner.invoke(app, ["export", sel, "--db", str(db), "--format", fmt, "--out", str(path)])
        assert r.exit_code == 0, r.output
        out[fmt] = path.read_text()
    rows_csv = list(csv.DictReader(out["csv"].splitlines()))
    doc = json.loads(out["json"])
    rows_jsonl = [json.loads(line) for line in out["jsonl"].splitlines()]
    tasks = json.loads(out["labelstudio"])
    assert [r["sample_id"] for r in rows_csv] == ids == [r["sample_id"] for r in doc["items"]]
    assert [r["sample_id"] for r in rows_jsonl] == ids == [t["data"]["sample_id"] for t in tasks]
    assert doc["selection"] == sel and doc["count"] == 30 and doc["tool"].startswith("mldbg ")
    assert doc["strategy"]["strategy"] == "high_error_proba" and doc["run"] == "pool"
    for a, b in zip(rows_csv, doc["items"], strict=True):
        assert float(a["error_proba"]) == pytest.approx(b["error_proba"]) and a["zone"] == b["zone"]
        assert Path(a["path"]).is_absolute() and Path(a["path"]).is_file()
    # Label Studio's import structure: data.image; predictions[].result[] with from_name/to_name/type/value
    for t, row in zip(tasks, doc["items"], strict=True):
        assert t["data"]["image"] == row["path"]
        pred = t["predictions"][0]
        assert pred["score"] == pytest.approx(row["error_proba"]) and pred["model_version"] == doc["result"]
        res = pred["result"][0]
        assert res["type"] == "choices" and res["value"]["choices"] == [row["predicted"]]
        assert {"from_name", "to_name"} <= set(res) and t["meta"]["zone"] == row["zone"]
    r = runner.invoke(app, ["export", "--db", str(db), "--format", "labelstudio", "--out", "-",
                            "--url-prefix", "/data/local-files/?d=pool/"])  # fmt: skip
    assert json.loads(r.stdout)[0]["data"]["image"] == f"/data/local-files/?d=pool/{ids[0]}"


def test_copy_to_keeps_relative_paths_and_refuses_unsafe_targets(db: Path, tmp_path: Path) -> None:
    sel = _query(db, "--n", "5")["selection"]
    dest = tmp_path / "batch_07"
    r = runner.invoke(app, ["export", sel, "--db", str(db), "--copy-to", str(dest)])
    assert r.exit_code == 0, r.output
    assert len(list(dest.iterdir())) == 5
    r = runner.invoke(app, ["export", sel, "--db", str(db), "--copy-to", str(dest)])
    assert r.exit_code == 2 and "is not empty" in r.output and "--force" in r.output
    r = runner.invoke(app, ["export", sel, "--db", str(db), "--copy-to", str(dest), "--force", "--link"])
    assert r.exit_code == 0 and all(p.is_symlink() for p in dest.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "--zones", "hotpsot"], "unknown zone 'hotpsot'; did you mean 'hotspot'?"),
        (["query", "--where", "error_proba>=0;drop_table"], "is not a number"),
        (["query", "--n", "0"], "--n 0"),
        (["query", "--mix", "best=1"], "unknown strategy 'best'"),
        (["query", "--run", "val", "--result", "nope"], "no result named 'nope'"),
        (["export", "sel-9", "--out", "x.csv"], "no selection 'sel-9'"),
        (["export", "--out", "missing/dir/x.csv"], "output directory missing/dir does not exist"),
        (["export"], "say where to write"),
        (["selections", "drop", "sel-9"], "no selection 'sel-9'"),
    ],
)
def test_bad_input_is_one_clear_line(db: Path, args: list[str], message: str, clean_env: Path) -> None:
    if args[0] == "export" and "sel-9" not in args:
        _query(db, "--n", "3")
    r = runner.invoke(app, [*args, "--db", str(db)])
    assert r.exit_code in (1, 2), r.output
    assert message in r.output and "Traceback" not in r.output
    assert not list(clean_env.rglob("*.csv"))  # nothing half-written


def test_query_scores_a_run_lazily_and_says_when_nothing_is_scored(db: Path, tmp_path: Path) -> None:
    from ml_debugger.core.store import Store

    with Store(db) as store:
        (name,) = store.result_names()
        store.con.execute("DELETE FROM scores WHERE run = 'pool'; DELETE FROM scored WHERE run = 'pool'")
    ans = _query(db, "--run", "pool", "--n", "5", "--dry-run")  # scored on the way
    assert ans["result"] == name and len(ans["items"]) == 5
    empty = tmp_path / "e.duckdb"
    Store(empty).close()
    r = runner.invoke(app, ["query", "--db", str(empty)])
    assert r.exit_code == 2 and "no scored runs yet" in r.output and "mldbg score" in r.output


def test_copy_refuses_sample_ids_that_leave_the_folder(tmp_path: Path) -> None:
    import polars as pl

    from ml_debugger.core.export import copy_images
    from ml_debugger.errors import UsageError

    src = tmp_path / "a.png"
    src.write_bytes(b"x")
    rows = pl.DataFrame({"sample_id": ["ok/a.png", "../../etc/evil.png"], "path": [str(src), str(src)]})
    dest = tmp_path / "drop"
    with pytest.raises(UsageError, match="outside"):
        copy_images(rows, dest)
    assert not dest.exists() or not any(dest.rglob("*.png"))  # nothing copied before the check failed


def test_default_run_is_the_newest_scored_pool_even_after_a_new_evaluation(db: Path) -> None:
    r = runner.invoke(app, ["evaluate", "val", "--db", str(db), "--result-name", "later"])
    assert r.exit_code == 0, r.output  # val now has the newest (out-of-fold) scores
    ans = _query(db, "--n", "3", "--dry-run")
    assert ans["run"] == "pool"
