"""The pre-timeout signal as a checkpoint-and-requeue at the next step boundary.

SLURM sends a signal some time before a job's limit (submitit asks for ``--signal=USR2@90``) and
submitit's handler requeues the job and exits at once, which would lose up to ``ckpt_every`` steps.
:class:`PreemptionGuard` takes the signal over while training runs: it only records it; the loop sees
it at the end of the step (all ranks agree through one all-reduce), saves a checkpoint with every
rank, and then hands over to the previous handler (submitit's requeue). The requeued job lands in the
same run directory and resumes from that checkpoint (docs/experiments.md).
"""

from __future__ import annotations

import signal
import threading

__all__ = ["PreemptionGuard", "PREEMPT_SIGNAL"]

PREEMPT_SIGNAL = signal.SIGUSR2  # submitit's default: sbatch --signal=USR2@<signal_delay_s>


class PreemptionGuard:
    """Records the pre-timeout signal; :meth:`requested` agrees across ranks; :meth:`requeue` hands
    over to the handler that was installed before (submitit's requeue) once the checkpoint is saved."""

    def __init__(self, signum: int = PREEMPT_SIGNAL):
        self.signum = signum
        self.received = False
        self.previous = None
        self.installed = False

    def install(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(self.signum, self._on_signal)
            self.installed = True
        return self

    def uninstall(self) -> None:
        if self.installed:
            signal.signal(self.signum, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False

    def _on_signal(self, signum, frame) -> None:
        self.received = True

    def requested(self, accelerator) -> bool:
        """True on every rank when any rank got the signal (one all-reduce per step when distributed)."""
        if accelerator.num_processes == 1:
            return self.received
        import torch

        flag = torch.tensor([1.0 if self.received else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def requeue(self, is_main: bool) -> None:
        """After the checkpoint: submitit's handler requeues the job (rank 0) and exits; without one
        (a plain run) the process ends with the signal's exit code, the checkpoint kept."""
        self.uninstall()
        prev = self.previous
        if is_main and callable(prev):
            prev(self.signum, None)  # submitit: requeue, then sys.exit
        raise SystemExit(128 + int(self.signum))
