"""keep_freed_memory: large tensors are reused instead of being mapped and zero-filled anew.

Each case runs in a fresh interpreter, because the allocator setting is for the whole process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)

# Allocates, fills and frees a 64 MB tensor (the size of one seed-model activation at batch 16)
# repeatedly and prints the page faults that 5 repeats cost once the heap has settled (glibc
# cannot reuse a freed block for an aligned request of the same size until neighbours merge).
PROBE = """
import resource, sys, torch
from hgpose.runtime.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(20):
    torch.empty(16 * 2**20).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(16 * 2**20).fill_(1)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_TENSOR = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def _thp_always() -> bool:
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


# With transparent huge pages always on, a fresh mapping faults in 2 MB at a time: far fewer faults.
FRESH_FAULTS = 4 * PAGES_PER_TENSOR // (512 if _thp_always() else 1)


def probe(mode: str, **env) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


def test_large_tensors_are_reused_instead_of_faulted_in_again():
    _, default_faults = probe("default")
    kept, kept_faults = probe("keep")
    assert default_faults > FRESH_FAULTS  # glibc maps every repeat afresh: what we fix
    assert kept == "True"
    assert kept_faults < PAGES_PER_TENSOR // 10


def test_a_users_own_malloc_setting_is_left_alone():
    kept, faults = probe("keep", MALLOC_MMAP_MAX_="65536")
    assert kept == "False"
    assert faults > FRESH_FAULTS
