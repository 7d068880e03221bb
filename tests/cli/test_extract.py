"""`mldbg extract`, `runs`, `show` through the CLI, on real digits, with every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from ml_debugger.cli.app import app
from ml_debugger.core.demo import DemoFiles
from tests.conftest import PRE_FLAGS, Models

runner = CliRunner()


def _extract(db: Path, *args: str) -> object:
    return runner.invoke(app, ["extract", *args, "--db", str(db), "--workers", "0", *PRE_FLAGS])


def test_extract_labelled_and_unlabelled_then_list_and_show(demo: DemoFiles, tmp_path: Path, clean_env: Path) -> None:
    db = tmp_path / "x.duckdb"
    r = _extract(db, str(demo.val), "--model", str(demo.model), "--name", "val")
    assert r.exit_code == 0, r.output
    assert "run val extracted" in r.output and "accuracy" in r.output
    r = _extract(db, str(demo.pool), "--model", str(demo.model), "--name", "pool", "--classes", str(demo.classes),
                 "--stability", "2", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n_samples"] == len(list(demo.pool.glob("*.png"))) and summary["labelled"] is False

    r = runner.invoke(app, ["runs", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    runs = {x["name"]: x for x in json.loads(r.stdout)}
    assert runs["val"]["labelled"] and not runs["pool"]["labelled"]
    assert runs["val"]["samples"] == len(list(demo.val.glob("*/*.png")))
    r = runner.invoke(app, ["runs", "--db", str(db)])
    assert r.exit_code == 0 and "val" in r.output and "pool" in r.output

    r = runner.invoke(app, ["show", "val", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    details = json.loads(r.stdout)
    assert 0.5 < details["accuracy"] < 1.0  # a real, imperfect model
    assert sum(c["labelled"] for c in details["classes"]) == runs["val"]["samples"]
    r = runner.invoke(app, ["show", "pool", "--db", str(db)])
    assert r.exit_code == 0 and "mean stability" in r.output, r.output

    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            "SELECT min(stability), max(stability), max(flip_rate), count(*) FILTER (WHERE stability IS NULL) "
            "FROM outputs WHERE run = 'pool'"
        ).fetchall()[0]
    assert 0 <= row[0] <= row[1] <= 1 and 0 <= row[2] <= 1 and row[3] == 0

    r = runner.invoke(app, ["runs", "drop", "pool", "--db", str(db)])
    assert r.exit_code == 0 and "dropped run pool" in r.output
    r = runner.invoke(app, ["show", "pool", "--db", str(db)])
    assert r.exit_code == 1 and "no run or result named 'pool'" in r.output and "runs: val" in r.output


def test_rerun_is_up_to_date_and_new_files_are_added(demo: DemoFiles, tmp_path: Path, clean_env: Path) -> None:
    import shutil

    pool = tmp_path / "pool"
    shutil.copytree(demo.pool, pool)
    db = tmp_path / "x.duckdb"
    args = [str(pool), "--model", str(demo.model), "--name", "pool", "--classes", str(demo.classes)]
    assert _extract(db, *args).exit_code == 0
    r = _extract(db, *args, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "up-to-date"
    shutil.copyfile(next(pool.glob("*.png")), pool / "new_one.png")
    r = _extract(db, *args, "--json")
    s = json.loads(r.stdout)
    assert s["n_new"] == 1 and s["n_samples"] == len(list(pool.glob("*.png")))
    # different settings under the same name: refused, with the way out
    r = _extract(db, *args[:-2], "--stability", "2")
    assert r.exit_code == 1 and "already exists" in r.output and "--overwrite" in r.output
    r = _extract(db, *args, "--stability", "2", "--overwrite", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["resumed"] is False


def test_corrupt_images_are_skipped_and_recorded(demo: DemoFiles, tmp_path: Path, clean_env: Path) -> None:
    import shutil

    pool = tmp_path / "pool"
    shutil.copytree(demo.pool, pool)
    (pool / "broken.png").write_text("not a png")
    data = next(pool.glob("digit_*.png")).read_bytes()
    (pool / "truncated.png").write_bytes(data[: len(data) // 2])
    db = tmp_path / "x.duckdb"
    r = _extract(db, str(pool), "--model", str(demo.model), "--name", "pool", "--classes", str(demo.classes))
    assert r.exit_code == 0, r.output
    assert "2 skipped" in r.output
    r = runner.invoke(app, ["show", "pool", "--db", str(db), "--json"])
    skipped = {s["sample_id"]: s["reason"] for s in json.loads(r.stdout)["skipped_files"]}
    assert set(skipped) == {"broken.png", "truncated.png"}
    assert all(reason for reason in skipped.values())


BAD_INPUTS = [
    (
        lambda d, m, t: [str(d.val), "--model", str(m.pt2), "--db", str(t / "future.duckdb")],
        "schema version 99, newer than this mldbg understands",
    ),
    (lambda d, m, t: [str(t / "missing"), "--model", str(m.pt2)], "dataset .*missing does not exist"),
    (lambda d, m, t: [str(t / "empty"), "--model", str(m.pt2)], "holds no images"),
    (lambda d, m, t: [str(d.val), "--model", str(t / "nope.pt2")], "model file .*nope.pt2 does not exist"),
    (
        lambda d, m, t: [str(d.val), "--model", str(t / "junk.pt")],
        "cannot load .*junk.pt as a TorchScript model",
    ),
    (
        lambda d, m, t: [str(d.val), "--model", "no_such_pkg.models:build"],
        "cannot import 'no_such_pkg.models'",
    ),
    (lambda d, m, t: [str(d.val), "--model", str(t / "seg.ts")], r"needs logits \[B, C\]"),
    (
        lambda d, m, t: [str(d.pool), "--model", str(m.pt2), "--classes", str(t / "three.txt")],
        "outputs 10 scores .* gives 3 classes; pass --classes FILE",
    ),
    (
        lambda d, m, t: [str(d.val), "--model", str(m.pt2), "--layer", "fc9"],
        r"unknown --layer 'fc9'; available modules: .*conv1",
    ),
    (
        lambda d, m, t: [str(d.val), "--model", str(m.pt2), "--db", str(t / "notes.txt")],
        "not a readable DuckDB database",
    ),
    (
        lambda d, m, t: [str(d.val), "--model", str(m.pt2), "--batch-size", "0"],
        "--batch-size 0 must be at least 1",
    ),
    (
        lambda d, m, t: [str(d.val), "--model", str(m.pt2), "--config", str(t / "bad.yaml")],
        "unknown key.*batchsize",
    ),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_one_clear_line(case: int, demo: DemoFiles, models: Models, tmp_path: Path, clean_env: Path) -> None:
    import torch

    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"\x00junk" * 20)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    (tmp_path / "notes.txt").write_text("my notes\n" * 50)
    (tmp_path / "bad.yaml").write_text("extract:\n  batchsize: 3\n")
    with duckdb.connect(str(tmp_path / "future.duckdb")) as con:
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute("INSERT INTO meta VALUES ('schema_version', '99')")

    class Seg(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    torch.jit.save(torch.jit.script(Seg()), str(tmp_path / "seg.ts"))
    make_args, message = BAD_INPUTS[case]
    args = make_args(demo, models, tmp_path)
    db = [] if "--db" in args else ["--db", str(tmp_path / "x.duckdb")]
    r = runner.invoke(app, ["extract", *args, *db, "--workers", "0", *PRE_FLAGS])
    assert r.exit_code in (1, 2), r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    import re

    assert re.search(message, " ".join(r.stderr.split())), r.stderr
    if (tmp_path / "x.duckdb").exists():  # nothing half-written: no run was created
        with duckdb.connect(str(tmp_path / "x.duckdb"), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM runs").fetchall()[0][0] == 0
    assert (tmp_path / "notes.txt").read_text().startswith("my notes")


def test_factory_and_torchscript_models(demo: DemoFiles, models: Models, tmp_path: Path, clean_env: Path) -> None:
    db = tmp_path / "x.duckdb"
    r = _extract(
        db,
        str(demo.val),
        "--model",
        models.factory,
        "--weights",
        str(models.weights),
        "--name",
        "f",
        "--json",
    )
    assert r.exit_code == 0, r.output
    r2 = _extract(db, str(demo.val), "--model", str(models.ts), "--name", "t", "--json")
    assert r2.exit_code == 0, r2.output
    a, b = json.loads(r.stdout), json.loads(r2.stdout)
    assert a["accuracy"] == b["accuracy"] and a["feature_dim"] == b["feature_dim"] == 64


def test_config_file_example(demo: DemoFiles, tmp_path: Path, clean_env: Path) -> None:
    """configs/grayscale-28.yaml sets preprocessing and stability; a flag still overrides it."""
    config = Path(__file__).resolve().parents[2] / "configs" / "grayscale-28.yaml"
    db = tmp_path / "x.duckdb"
    args = ["extract", str(demo.val), "--model", str(demo.model), "--db", str(db), "--workers", "0"]
    r = runner.invoke(app, [*args, "--config", str(config), "--image-size", "16", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["show", "val", "--db", str(db), "--json"])
    settings = json.loads(r.stdout)["run"]["settings"]
    assert settings["preprocess"] == {"image_size": 16, "channels": 1, "mean": [0.286], "std": [0.353]}
    assert settings["stability"]["k"] == 4
