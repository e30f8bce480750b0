"""Hand freed heap memory back to the operating system between the stages of a large computation.

glibc keeps memory that torch and numpy freed in its heap, fragmented by tensors of many sizes, and only
returns it when asked: without this the refined stage's peak RSS on a 516-slice CT was 0.7 GB above what
was alive (measured: 2.64 GB against 1.96 GB with freed blocks given back at once, which however made every
allocation a fresh mmap and the stage 40% slower). Trimming once per organ costs milliseconds. A no-op
where the C library is not glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_trim = None
if sys.platform.startswith("linux"):
    try:
        _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        _trim = None


def release_free_memory() -> None:
    """Return the heap's free pages to the OS (glibc `malloc_trim(0)`); nothing else changes."""
    if _trim is not None:
        _trim(0)
