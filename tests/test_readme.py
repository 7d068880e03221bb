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


# A block right after `<!-- runs in the detection demo -->` runs in `mldbg demo --task detection`,
# after `<!-- runs in the 3D demo -->` in `mldbg demo --task detection3d`; others in `mldbg demo`.
DEMOS = {"": "classification", "detection": "detection", "3D": "detection3d"}


def _blocks(kind: str, *, demo: str = "") -> list[str]:
    found = re.findall(rf"(?:<!-- runs in the (detection|3D) demo -->\n)?```{kind}\n(.*?)```", README.read_text(),
                       flags=re.S)  # fmt: skip
    return [body for marker, body in found if marker == demo]


def _commands(*, demo: str = "") -> list[str]:
    blocks = _blocks("console", demo=demo)
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
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), {})  # the Python examples run as written


@pytest.mark.parametrize(("demo", "folder"), [("detection", "mldbg-demo-det"), ("3D", "mldbg-demo-3d")])
def test_readme_detection_commands_run_in_their_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo: str,
                                                     folder: str) -> None:  # fmt: skip
    for key in [k for k in os.environ if k.startswith("MLDBG_")]:
        monkeypatch.delenv(key)
    r = runner.invoke(app, ["-q", "demo", str(tmp_path / folder), "--task", DEMOS[demo]])
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path / folder)
    commands = _commands(demo=demo)
    assert len(commands) >= 4
    for line in commands:
        r = runner.invoke(app, shlex.split(line)[1:])
        assert r.exit_code == 0, f"{line}\n{r.output}"
    blocks = _blocks("python", demo=demo)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
