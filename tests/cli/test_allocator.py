"""The command line's fixed malloc thresholds: set by ``main()``, left alone when the user chose."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

try:
    _GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")
except OSError:
    _GLIBC = False

# Runs the entry point (`mldbg --version`), then allocates 24 MiB and says whether glibc served
# it with a fresh mmap (its default threshold, at most a few MiB this early) or from the heap.
_PROBE = """
import ctypes, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
from ml_debugger.cli.app import main
sys.argv = ["mldbg", "--version"]
try:
    main()
except SystemExit:
    pass
before = libc.mallinfo2().hblks
block = bytearray(24 << 20)
print("mmap" if libc.mallinfo2().hblks > before else "heap")
"""


def _served_by(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt and mallinfo2 only")
def test_cli_keeps_large_blocks_in_the_heap() -> None:
    assert _served_by() == "heap"


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt and mallinfo2 only")
@pytest.mark.parametrize("env", [{"MLDBG_TUNE_MALLOC": "0"}, {"MALLOC_ARENA_MAX": "2"}])
def test_cli_leaves_glibc_alone_when_asked(env: dict[str, str]) -> None:
    # the control: without the thresholds the same block is mapped, so the test above can fail
    assert _served_by(**env) == "mmap"
