"""How the entry points' OpenMP threads wait (docs/performance.md, "CPU threads").

Set before torch loads OpenMP (the entry points call :func:`set_openmp_wait` before importing torch; the
demo and table scripts pass the result to their child processes). libgomp, the OpenMP of PyTorch's
wheels, keeps a thread that has finished its share of an operation spinning for ``GOMP_SPINCOUNT``
iterations before it sleeps. Its default (300,000, about a millisecond) suits a machine of one's own;
on a loaded host the spinning threads take the cores the working threads need (the tiny training step
went from 0.7 to 18 s). ``OMP_WAIT_POLICY=PASSIVE`` (no spinning) fixes the loaded case but costs a
wake-up per operation: on a quiet machine the tiny model's step, thousands of small operations, took
1.8x as long as with the default. A short spin keeps most of the quiet speed and bounds the waste under
load. Whatever the user sets (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) wins.
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
