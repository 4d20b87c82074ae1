"""How the entry points' OpenMP threads wait, and how many a CPU training run uses (docs/performance.md,
"CPU threads").

The waiting is set before torch loads OpenMP: the entry points (``src/train.py``, ``src/sample.py``,
``src/evaluate.py``) call :func:`set_openmp_wait` before importing torch, so every script that runs them
gets it too. libgomp, the OpenMP of PyTorch's wheels, keeps a thread that has finished its share of an
operation spinning for ``GOMP_SPINCOUNT`` iterations before it sleeps. ``OMP_WAIT_POLICY=PASSIVE`` (no
spinning) costs a wake-up per operation: on a quiet machine the tiny model's two-thread step, thousands of
small operations, took 1.48x the one-thread time. A spin of 30,000 is as fast as libgomp's default there
(0.75x), but any spin long enough for that makes a loaded host's step several times slower; under load
:class:`ThreadGovernor` drops the run to one thread, which does not spin. Whatever the user sets
(``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: libgomp spin iterations before a waiting thread sleeps (default 300,000)
SPIN_COUNT = "30000"


def set_openmp_wait(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Give ``env`` (``os.environ`` by default) the project's OpenMP waiting, unless it sets its own;
    returns ``env``."""
    env = os.environ if env is None else env
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = SPIN_COUNT
    return env


class ThreadGovernor:
    """Intra-op threads of a CPU training run, following the machine's load.

    A short spin (above) is fast on a quiet machine and slow on a loaded one: there a waiting thread
    spins on a core another job needs (two competing busy jobs on 2 cores: 2.9-6.8x the one-thread step,
    docs/performance.md "CPU threads"). Every ``every`` steps this reads the 1-minute load average, takes
    out this process's own share (its CPU seconds per wall second since the last check) and, when the
    other jobs leave fewer cores than the threads in use, drops to one thread (one thread never spins);
    once they leave every core free again it goes back. Inactive when the user fixed the thread count
    (``OMP_NUM_THREADS``) or the machine has one core.
    """

    def __init__(self, every: int = 25, cores: int | None = None, threads: int | None = None,
                 loadavg=None, clock=None, cpu_clock=None, set_threads=None):
        import time

        import torch

        from camvid.data.workers import available_cores  # here: torch must not load before set_openmp_wait

        self.every = max(1, int(every))
        self.cores = cores or available_cores()
        self.full = threads or torch.get_num_threads()
        self.loadavg = loadavg or (lambda: os.getloadavg()[0])
        self.clock, self.cpu_clock = clock or time.perf_counter, cpu_clock or time.process_time
        self.set_threads = set_threads or torch.set_num_threads
        self.active = self.full > 1 and self.cores > 1 and "OMP_NUM_THREADS" not in os.environ
        self.threads = self.full
        self.changes: list[tuple[int, int, float]] = []  # (step, threads, others' load)
        self._mark = (self.clock(), self.cpu_clock())

    def others(self) -> float:
        """The other jobs' load: the load average less this process's own recent CPU use."""
        wall, cpu = self.clock(), self.cpu_clock()
        own = (cpu - self._mark[1]) / max(wall - self._mark[0], 1e-9)
        self._mark = (wall, cpu)
        return max(0.0, self.loadavg() - own)

    def step(self, step: int) -> int:
        """Call once per training step; returns the thread count in use."""
        if not self.active or step % self.every:
            return self.threads
        others = self.others()
        want = self.threads
        if self.threads > 1 and others > self.cores - self.threads + 0.75:
            want = 1  # the others need the cores our extra threads would spin on
        elif self.threads == 1 and others < self.cores - self.full + 0.35:
            want = self.full  # (the gap between the two bounds keeps it from flapping)
        if want != self.threads:
            self.set_threads(want)
            self.threads = want
            self.changes.append((step, want, round(others, 2)))
        return self.threads
