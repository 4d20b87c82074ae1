"""Where a CPU process's large tensors get their memory (docs/performance.md, "CPU allocator").

PyTorch's CPU tensors come from the C library's ``malloc``. glibc's serves every block above its mmap
threshold (adjusted at run time, never above 32 MiB) with a fresh ``mmap`` and hands it back to the
kernel on ``free``. A step of a video model allocates and frees the same large activations again and
again (the q/k/v of one attention level at 32x32 are 42-84 MiB each), so every one of them costs a
page fault per 4 KiB page, the kernel zeroing each page: at 32x32 the system time is about a quarter of
the CPU time of the attention benchmark. PyTorch's CPU tuning guide advises an allocator that keeps
freed memory (jemalloc, tcmalloc through ``LD_PRELOAD``); :func:`reuse_freed_memory` gets glibc to do
the same without one: blocks up to ``max_block`` come from the heap, whose freed memory the next
tensor reuses, and up to ``keep`` free bytes stay mapped at its top. The CUDA caching allocator does
this for GPU memory already.

The trade-off is memory: glibc's heap cannot hand back the middle of its span, so mixed block sizes
fragment it. A forward pass (sampling, evaluation) gains most for a smaller rise of its peak resident
set; a training step's saved activations fragment the heap more (the 32x32 ``cross_video`` module: forward
0.71x the time for 1.26x the peak, forward+backward 0.78x for 1.6x; ``python
benchmarks/cpu_allocator.py``, docs/performance.md "CPU allocator"). So ``src/sample.py``
and ``src/evaluate.py`` keep freed memory by default and ``src/train.py`` keeps glibc's defaults;
``CAMVID_CPU_ALLOCATOR=reuse`` or ``=system`` chooses for any of them. Elsewhere than glibc (macOS,
musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os

#: mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap and are reused after ``free``
MAX_BLOCK = 1 << 30
#: free memory kept at the top of the heap for the next allocations
KEEP = 1 << 30
ENV = "CAMVID_CPU_ALLOCATOR"
SETTINGS = ("reuse", "system")
#: each entry point's setting when ``CAMVID_CPU_ALLOCATOR`` is unset (docs/performance.md, "CPU allocator")
DEFAULTS = {"train": "system", "sample": "reuse", "evaluate": "reuse"}


def _libc():
    """The process's own C library when it is glibc, else None (the symbols already loaded: no search
    for the library file, which can start ``ldconfig``, at every entry point's start)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def reuse_freed_memory(max_block: int = MAX_BLOCK, keep: int = KEEP) -> bool:
    """Let glibc's heap keep and reuse freed blocks up to ``max_block`` bytes, keeping up to ``keep``
    free bytes mapped (``mallopt``, effective at once, for this process); True when applied, False off
    glibc."""
    if max_block <= 0 or keep < 0:
        raise ValueError(f"max_block must be positive and keep non-negative, got {max_block}, {keep}")
    libc = _libc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = (1 << 31) - 1  # mallopt takes an int
    if mallopt(_M_MMAP_THRESHOLD, min(max_block, limit)) != 1:  # a glibc that caps the threshold: leave it all
        return False
    return mallopt(_M_TRIM_THRESHOLD, min(keep, limit)) == 1


def choose_cpu_allocator(entry: str, env=None) -> str:
    """Apply ``CAMVID_CPU_ALLOCATOR`` from ``env`` (``os.environ`` by default), or the ``entry`` point's
    default (:data:`DEFAULTS`) when it is unset: ``reuse`` (:func:`reuse_freed_memory`) or ``system``
    (glibc's defaults); any other value is an error. Returns the setting in effect: ``system`` where
    ``reuse`` cannot apply (off glibc)."""
    if entry not in DEFAULTS:
        raise ValueError(f"unknown entry point {entry!r}; valid: {', '.join(DEFAULTS)}")
    env = os.environ if env is None else env
    choice = env.get(ENV, DEFAULTS[entry])
    if choice not in SETTINGS:
        raise ValueError(f"{ENV}={choice!r}: expected 'reuse' (keep freed memory for the next tensors) "
                         "or 'system' (glibc's defaults)")
    return "reuse" if choice == "reuse" and reuse_freed_memory() else "system"
