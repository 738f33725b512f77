"""Keep glibc from returning every large freed tensor buffer to the kernel.

glibc serves allocations above its mmap threshold (at most 32 MB) with a fresh `mmap` and
unmaps them on free. PyTorch's CPU tensors use plain malloc, so every large temporary (the
float64 im2col buffers of pyiqa's SSIM family are 0.5-1.5 GB per convolution at batch 16)
is page-faulted in again on every call, and the kernel's page zeroing can take a large share
of a run's CPU time (measurements in docs/speed.md).

`keep_freed_memory()` serves every allocation from the heap (`M_MMAP_MAX = 0`) and lets
up to `trim_mb` of free memory stay at its top (`M_TRIM_THRESHOLD`), so buffers are reused
instead of faulted in again. The cost is a higher resident peak (freed memory is kept for
reuse), and a heap that only grows over a long run of many models (docs/speed.md). So the
runner calls `release_freed_memory()` (`malloc_trim`) when it is done with a
model: each model's buffers are kept while its cells run, then handed back. It does nothing
off glibc, and `BENCHMARK_MALLOC=default` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_MAX = -4
_done: bool | None = None
_libc: ctypes.CDLL | None = None


def keep_freed_memory(trim_mb: int = 1024) -> bool:
    """Tune glibc malloc once per process; True when it is tuned (now or before)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("BENCHMARK_MALLOC", "").strip().lower() == "default":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl's mallopt is a stub)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    global _libc
    _libc = libc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim = max(0, min(int(trim_mb), 2047)) << 20  # an int in bytes
    _done = mallopt(M_TRIM_THRESHOLD, trim) == 1 and mallopt(M_MMAP_MAX, 0) == 1
    if not _done:
        log.debug("glibc mallopt refused the settings; the allocator is left as it is")
    return _done


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (after a model's cells; glibc only)."""
    if _done and _libc is not None:
        _libc.malloc_trim(0)
