"""Allocator tuning for CPU forward passes.

A forward pass allocates tensors of tens to hundreds of megabytes and frees them a moment
later. glibc's malloc serves such blocks with mmap and unmaps them on free, so the next pass
touches fresh pages and the kernel faults and zeroes every 4 KiB of them again: on a CPU that
costs a pass about a quarter of its time (a 32 MB elementwise op runs 3-5x slower on fresh
pages than on reused ones; `benchmarks/README.md` has the figures). `keep_freed_memory` asks
malloc to keep freed memory for reuse instead: no mmap for large blocks, one arena for all
threads (a thread arena would mmap a block larger than its 64 MB heap anyway), and no trimming
of the heap below 2 GiB of free space. The process's RSS then stays near its high-water mark,
which the service's memory bound already counts, rather than falling back after each pass.

It must run before torch starts any thread (before `import torch`): the arena limit is fixed
when the first extra thread allocates. glibc only; elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

TRIM_THRESHOLD = 2**31 - 1  # the largest an int parameter allows


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory rather than return it; True if it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not mallopt(M_ARENA_MAX, 1):
        return False  # not glibc (musl's mallopt accepts nothing)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
