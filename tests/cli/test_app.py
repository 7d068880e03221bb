"""The command line as a whole: help texts, --version, no torch for --help, mldbg.yaml precedence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from ml_debugger import __version__
from ml_debugger.cli.app import app
from ml_debugger.core.demo import DemoFiles
from tests.conftest import PRE_FLAGS

runner = CliRunner()


def _all_commands() -> list[list[str]]:
    root = get_command(app)
    found = []

    def walk(cmd: object, path: list[str]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            found.append([*path, name])
            walk(sub, [*path, name])

    walk(root, [])
    return found


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_command_has_help(path: list[str]) -> None:
    for flag in ("--help", "-h"):
        r = runner.invoke(app, [*path, flag])
        assert r.exit_code == 0, r.output
        assert "Usage" in r.output
    cmd = get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    assert cmd.help and len(cmd.help.strip().splitlines()[0]) > 10  # a real one-line summary
    if not getattr(cmd, "commands", None):
        assert "Example: mldbg" in cmd.help
    for param in cmd.params:
        if param.name not in ("help",):
            assert getattr(param, "help", None), f"{' '.join(path)} {param.name} has no help"


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"mldbg {__version__}"


def test_help_does_not_import_torch() -> None:
    code = "import sys; from ml_debugger.cli.app import app; import typer.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ml_debugger", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "Usage" in r.stdout
    assert not [ln for ln in r.stderr.splitlines() if ln.rstrip().endswith("| torch")]


def _extract_json(demo: DemoFiles, *extra: str, env: dict[str, str] | None = None) -> dict:
    r = runner.invoke(
        app,
        [
            "extract",
            str(demo.val),
            "--model",
            str(demo.model),
            "--workers",
            "0",
            *PRE_FLAGS,
            "--json",
            *extra,
        ],
        env=env,
    )
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_settings_precedence_flag_env_yaml_default(demo: DemoFiles, clean_env: Path) -> None:
    # built-in default: ./mldbg.duckdb, run named after the folder
    s = _extract_json(demo)
    assert Path(s["db"]) == Path("mldbg.duckdb") and s["run"] == "val"
    # mldbg.yaml beats the default (a global key and a command section)
    (clean_env / "mldbg.yaml").write_text("db: from_yaml.duckdb\nextract:\n  name: yaml_run\n")
    s = _extract_json(demo)
    assert s["db"] == "from_yaml.duckdb" and s["run"] == "yaml_run"
    # the environment beats mldbg.yaml
    s = _extract_json(demo, env={"MLDBG_DB": "from_env.duckdb", "MLDBG_EXTRACT_NAME": "env_run"})
    assert s["db"] == "from_env.duckdb" and s["run"] == "env_run"
    # a flag beats the environment
    s = _extract_json(demo, "--db", "flag.duckdb", "--name", "flag_run", env={"MLDBG_DB": "from_env.duckdb"})
    assert s["db"] == "flag.duckdb" and s["run"] == "flag_run"
    r = runner.invoke(app, ["runs", "--json"])  # `runs` reads the yaml db too
    assert [x["name"] for x in json.loads(r.stdout)] == ["yaml_run"]


def test_settings_errors(clean_env: Path) -> None:
    (clean_env / "mldbg.yaml").write_text("extract:\n  batchsize: 3\n")
    r = runner.invoke(app, ["runs"])
    assert r.exit_code == 2 and "unknown option 'batchsize' for `mldbg extract`" in r.stderr
    (clean_env / "mldbg.yaml").write_text("extract: [unclosed\n")
    r = runner.invoke(app, ["runs"])
    assert r.exit_code == 2 and "mldbg.yaml" in r.stderr and "not valid YAML" in r.stderr


def test_runs_without_database(clean_env: Path) -> None:
    r = runner.invoke(app, ["runs"])
    assert r.exit_code == 1 and "no mldbg database at mldbg.duckdb" in r.stderr
    assert not (clean_env / "mldbg.duckdb").exists()


def test_quiet_hides_progress(demo: DemoFiles, clean_env: Path) -> None:
    r = runner.invoke(app, ["-q", "extract", str(demo.val), "--model", str(demo.model), "--workers", "0", *PRE_FLAGS])
    assert r.exit_code == 0 and "samples/s" not in r.stderr
    r = runner.invoke(
        app,
        ["extract", str(demo.val), "--model", str(demo.model), "--workers", "0", "--name", "v2", *PRE_FLAGS],
    )
    assert r.exit_code == 0 and "samples/s" in r.stderr


def test_demo_command(tmp_path: Path, clean_env: Path) -> None:
    r = runner.invoke(app, ["demo", str(tmp_path / "d"), "--stability", "2", "--json"])
    assert r.exit_code == 0, r.output
    runs = {x["run"]: x for x in json.loads(r.stdout)["runs"]}
    assert runs["val"]["labelled"] and 0.6 < runs["val"]["accuracy"] < 0.99  # real and imperfect
    assert not runs["pool"]["labelled"] and runs["pool"]["n_samples"] > 500
    # it goes on through evaluate and score: a result, and every pool sample in a zone
    doc = json.loads(r.stdout)
    assert doc["result"].startswith("digits_cnn_v1_classification_v1_")
    assert sum(z["count"] for z in doc["pool_zones"]) == runs["pool"]["n_samples"]
    r = runner.invoke(app, ["demo", str(tmp_path / "d"), "--stability", "2"])  # a re-run replaces it all
    assert r.exit_code == 0 and "zones of the unlabelled pool" in r.output, r.output
    # the demo folder's mldbg.yaml makes the README's short commands work there
    import os

    os.chdir(tmp_path / "d")
    r = runner.invoke(
        app, ["extract", "data/val", "--model", "model.pt2", "--name", "val2", "--workers", "0", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["accuracy"] == runs["val"]["accuracy"]
