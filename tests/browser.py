"""Headless Chromium for the report tests and the README screenshot.

``python -m tests.browser REPORT.html OUT.png [HEIGHT]`` renders a report to a PNG (what
``make screenshot`` runs). Chromium comes from Debian's ``chromium`` package; ``.ci/run``
installs it when missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Headless, offline and quiet: without the background-networking flags Chromium tries to reach
# Google's hosts at every start, which this closed network refuses.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",
]
# What Chromium prints on stderr for each console message (errors, warnings, logs) of the page.
CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: list[str]


def _run(args: list[str], page: Path) -> subprocess.CompletedProcess[str]:
    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def dump_dom(page: Path) -> Rendered:
    """The page's DOM after its scripts ran, and every console message it logged."""
    done = _run(["--dump-dom"], page)
    return Rendered(done.stdout, CONSOLE.findall(done.stderr))


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 2600) -> list[str]:
    """Render ``page`` to ``png``; returns the console messages."""
    done = _run([f"--window-size={width},{height}", f"--screenshot={png.resolve()}"], page)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot: {done.stderr[-500:]}")
    return CONSOLE.findall(done.stderr)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m tests.browser REPORT.html OUT.png [HEIGHT]")
    messages = screenshot(Path(sys.argv[1]), Path(sys.argv[2]), height=int(sys.argv[3]) if len(sys.argv) == 4 else 2600)
    if messages:
        sys.exit("console messages: " + "; ".join(messages))
    print(f"wrote {sys.argv[2]}")
