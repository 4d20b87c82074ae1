"""SLURM / submitit plumbing: the process group from the job's tasks, and preemption.

A SLURM job of a sweep runs one task per GPU (``tasks_per_node = gpus``); submitit starts the same
Python callable in every task. :func:`export_distributed_env` turns the task's place in the job into
the ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` ... variables torch's ``env://`` rendezvous reads, so
``accelerate.Accelerator()`` forms one process group over all tasks (NCCL on GPUs, gloo on CPUs).

:class:`camvid.training.preemption.PreemptionGuard` turns the signal SLURM sends before the time limit (submitit asks for
``--signal=USR2@<signal_delay_s>``) into a flag the training loop checks at each step boundary: every
rank saves the checkpoint together, then submitit's own handler requeues the job and exits. The
requeued job composes the same config, lands in the same run directory and resumes from it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping

__all__ = ["distributed_env", "export_distributed_env"]

def distributed_env(global_rank: int, local_rank: int, num_tasks: int, num_nodes: int, master_addr: str,
                    job_id: str) -> dict[str, str]:
    """The env:// variables of one task. The port is derived from the job id, so every task of one
    job agrees on it without talking, and two jobs sharing a node rarely collide."""
    if not 0 <= global_rank < num_tasks:
        raise ValueError(f"global rank {global_rank} outside 0..{num_tasks - 1}")
    port = random.Random(str(job_id)).randint(20000, 60000)
    return {"RANK": str(global_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(num_tasks),
            "LOCAL_WORLD_SIZE": str(max(1, num_tasks // max(1, num_nodes))), "MASTER_ADDR": master_addr,
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(port))}


def export_distributed_env(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """Inside a multi-task submitit job, set the env:// variables (unless a launcher such as
    ``accelerate launch`` / ``torchrun`` did already); returns what was set, or None."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env or not (env.get("SUBMITIT_EXECUTOR") or env.get("SUBMITIT_FOLDER")):
        return None
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return None
    values = distributed_env(job.global_rank, job.local_rank, job.num_tasks, job.num_nodes,
                             job.hostnames[0], job.job_id)
    os.environ.update(values)
    return values
