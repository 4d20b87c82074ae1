"""How many DataLoader workers to start: the requested number, capped at this process's share of
the CPU cores.

Why: a worker's job (reading a tar, decoding JPEG, building the sample) is CPU-bound, so workers
beyond the cores they can run on add no decoding capacity; they only add processes for the
scheduler to switch between, their own start-up (fork, first shard, shared-memory slots) and more
hand-off traffic into the main process. benchmarks/data.py measured 4 workers on 2 cores at 11 %
fewer clips/s than 2 (docs/performance.md). The cap counts the cores this process may run on
(``os.sched_getaffinity``: what SLURM's or a container's CPU binding leaves, not the machine's
total) and divides them among the training processes of this node (``LOCAL_WORLD_SIZE``, set by
torchrun and ``accelerate launch``), since every rank starts its own workers.
``cap=False`` (``trainer.cap_workers=false``) starts the requested number regardless.

The same share sets how many threads each worker decodes a clip's JPEG frames with
(:func:`decode_threads`, ``data.decode_threads``): ``auto`` gives each started worker its part of
the share, so a lone worker on 2 cores decodes on 2 threads instead of leaving a core idle, and
``workers x threads`` stays within the share. The main process (0 workers) decodes on its own
thread: there the training loop needs the cores.
"""

from __future__ import annotations

import logging
import os

__all__ = ["available_cores", "local_processes", "worker_cap", "effective_workers", "decode_threads"]

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where the OS has no affinity API)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_processes() -> int:
    """Training processes on this node that each start their own workers (``LOCAL_WORLD_SIZE``)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"LOCAL_WORLD_SIZE={value!r} is not an integer (set by torchrun / accelerate launch; "
                         "unset it for a single process)") from None
    if count < 1:
        raise ValueError(f"LOCAL_WORLD_SIZE={count}: must be >= 1")
    return count


def worker_cap(cores: int | None = None, local: int | None = None) -> int:
    """The most workers one process starts: its share of the cores, at least 1."""
    cores = available_cores() if cores is None else cores
    local = local_processes() if local is None else local
    return max(1, cores // local)


def effective_workers(requested: int, cap: bool = True, *, cores: int | None = None, local: int | None = None,
                      announce: bool = False) -> int:
    """``requested`` DataLoader workers, or the cap (:func:`worker_cap`) when ``cap`` and the
    request is larger. ``announce`` logs a line when the number is reduced (the loader does,
    once per loader; the resume fingerprint only asks)."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {requested!r}")
    if not cap or requested == 0:
        return requested
    cores = available_cores() if cores is None else cores
    local = local_processes() if local is None else local
    limit = worker_cap(cores, local)
    if requested <= limit:
        return requested
    if announce:
        shared = f", shared by {local} training processes on this node" if local > 1 else ""
        log.warning("data loader: num_workers=%d but only %d CPU cores are available to this process "
                    "(os.sched_getaffinity)%s; starting %d worker(s), since decode processes beyond the cores only "
                    "add scheduling and start-up cost. Set trainer.cap_workers=false (build_dataloader("
                    "cap_workers=False)) to start %d anyway.", requested, cores, shared, limit, requested)
    return limit


def decode_threads(requested: int | str, workers: int, *, cores: int | None = None, local: int | None = None) -> int:
    """Threads each of ``workers`` started DataLoader workers decodes a clip with: ``"auto"`` (or
    None) -> the worker's part of this process's share of the cores, ``max(1, worker_cap //
    workers)``; an integer >= 1 as given. 1 with no workers (the main process decodes on its own
    thread)."""
    if requested is None or requested == "auto":
        return 1 if workers < 1 else max(1, worker_cap(cores, local) // workers)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"data.decode_threads={requested!r}: expected 'auto' or an integer >= 1 (threads per "
                         "loader worker that decode a clip's JPEG frames)")
    return requested if workers >= 1 else 1
