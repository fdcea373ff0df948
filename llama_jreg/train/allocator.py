"""CPU allocator settings for training (``trainer.malloc_tuning``).

PyTorch's CPU tensors come straight from the C library's ``malloc``. With glibc's defaults a large block
(32 MiB and more always, smaller ones depending on its dynamic threshold) is ``mmap``-ed and unmapped again
when freed, and the top of the heap is trimmed, so the next step's allocation of the same size page-faults
on every 4 KiB page it touches. A training step allocates and frees the same large activations every step:
``tiny``'s eager step (8 x 256 tokens) took 13,000-25,000 minor page faults and ~0.1 s of system CPU time a
step on the 2-core VM (``scripts/bench_cpu.py`` prints both per variant). Keeping freed memory in the heap
removes them (1-1,000 faults a step):

* ``M_MMAP_MAX`` = 0: every block comes from the heap (freed blocks are reused, not unmapped);
* ``M_TRIM_THRESHOLD`` = 1 GiB: the heap is not shrunk after every step (only when 1 GiB at its top is free);
* ``M_TOP_PAD`` = 256 MiB: the heap grows in large steps (address space only; pages are touched on use).

The cost: the process keeps its peak heap resident (a training step reaches that peak every step anyway).
These are process-wide settings of glibc (what Intel's CPU launch scripts get by preloading jemalloc or
tcmalloc); on another C library, or with ``trainer.malloc_tuning=false``, nothing changes. CUDA tensors do not
come from ``malloc`` (PyTorch caches them itself), so the trainer applies this on CPU only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**30, M_TOP_PAD: 256 * 2**20}

_applied = False


def tune_cpu_allocator() -> bool:
    """Apply ``SETTINGS`` with glibc's ``mallopt`` (once per process). True when they are in effect."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _applied
