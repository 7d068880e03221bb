"""Every `$ mldbg ...` line of the README's console blocks runs as written in the demo folder."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ml_debugger.cli.app import app

README = Path(__file__).resolve().parent.parent / "README.md"
runner = CliRunner()


def _commands() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    return [ln[2:].strip() for b in blocks for ln in b.splitlines() if ln.startswith("$ mldbg ")]


def test_readme_has_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert len(_commands()) >= 4


def test_readme_commands_run_in_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("MLDBG_")]:
        monkeypatch.delenv(key)
    r = runner.invoke(app, ["-q", "demo", str(tmp_path / "mldbg-demo"), "--stability", "2"])
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path / "mldbg-demo")
    for line in _commands():
        r = runner.invoke(app, shlex.split(line)[1:])
        assert r.exit_code == 0, f"{line}\n{r.output}"
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        exec(compile(block, "README.md", "exec"), {})  # the Python examples run as written
