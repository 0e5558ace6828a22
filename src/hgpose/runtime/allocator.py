"""Keep freed CPU memory for reuse instead of returning it to the kernel (glibc only).

glibc serves every block above 32 MB (above 128 KB until its threshold adapts) with a fresh `mmap`
and hands it back with `munmap` on free. A training step of the seed model allocates and frees
dozens of 16-64 MB activation and gradient tensors, so every step the kernel maps and zero-fills
gigabytes of new pages. On the 2-core CPU we develop on, that page-fault work was half of a plain
fp32 step (see benchmarks/train_step.py). Serving large blocks from the heap and never trimming it
lets each step reuse the previous step's memory. The price: the process holds on to its peak
memory until it exits, which is what a training or evaluation process wants anyway.

This is the same fix as preloading jemalloc or tcmalloc, which PyTorch's CPU performance guide
recommends, without having to start the process differently.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

# If the user has chosen the allocator's behaviour themselves, leave it alone.
USER_CHOICE_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory for the rest of the process; True if it now does.

    Does nothing (returns False) off glibc (macOS, Windows, musl) and when any of USER_CHOICE_ENV is
    set: setting e.g. MALLOC_MMAP_MAX_=65536 keeps glibc's default behaviour.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in USER_CHOICE_ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # No mmap for large blocks (glibc still falls back to it when the heap cannot grow), and never
    # shrink the heap top: 2**31 - 1 is the largest threshold a C int can express.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
