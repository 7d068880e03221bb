"""Fixed glibc ``malloc`` thresholds for the ``mldbg`` process (the command line only).

glibc's default thresholds move with what a process did before: a block above the mmap
threshold (128 KiB at start) gets fresh pages from the kernel on every allocation; freeing such
a block raises the threshold to its size, and the top of the heap goes back to the kernel
whenever more than twice that is free. A model's activations (several MB per batch) are then
faulted in afresh batch after batch, or not, depending on history. Fixed thresholds keep freed
blocks of up to 32 MiB in the heap for the next batch: a CLI extraction of 50,000
Fashion-MNIST images took 18.5 s instead of 22.8 s, at the same peak memory (BENCHMARKS.md).

Only the command line does this: ``main()`` owns its process, a library call does not. Python
users can set the same thresholds with ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=268435456`` in their environment. Any ``MALLOC_*`` variable or
``GLIBC_TUNABLES`` set by the user, or ``MLDBG_TUNE_MALLOC=0``, leaves glibc's own settings alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size are served from (and returned to) the heap: glibc's upper limit on
# 64-bit systems (4 * 1024 * 1024 * sizeof(long)).
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap is given back to the kernel only above this: a batch's
# buffers stay for the next batch instead of being unmapped and faulted in again.
TRIM_THRESHOLD = 256 << 20


def _user_chose() -> bool:
    env = os.environ
    if env.get("MLDBG_TUNE_MALLOC", "").strip().lower() in ("0", "false", "no", "off"):
        return True
    return "GLIBC_TUNABLES" in env or any(k.startswith("MALLOC_") for k in env)


def tune_allocator() -> bool:
    """Set fixed malloc thresholds when this process runs on glibc and the user set none;
    whether they were set."""
    if not sys.platform.startswith("linux") or _user_chose():
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        glibc = hasattr(libc, "gnu_get_libc_version")  # musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    if not glibc:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
