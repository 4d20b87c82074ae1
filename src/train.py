"""Train any method of the repo: ``python src/train.py model=cami2v attn=epipolar data=re10k``.

Compose with Hydra (conf/train.yaml), check the combination, run the one training loop.
Sweeps: ``python src/train.py -m attn=epipolar,epipolar_ref,full3d`` (``hydra/launcher=slurm`` on a
cluster). Multi-GPU: ``accelerate launch src/train.py trainer=ddp ...`` or ``torchrun``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # runnable without `pip install -e .`
    sys.path.insert(0, str(REPO / "src"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# before torch loads OpenMP: how its waiting threads spin (docs/performance.md, "CPU threads")
from camvid.threads import set_openmp_wait  # noqa: E402

set_openmp_wait()
# CPU: glibc's allocator as it is unless CAMVID_CPU_ALLOCATOR=reuse (docs/performance.md, "CPU allocator")
from camvid.allocator import choose_cpu_allocator  # noqa: E402

choose_cpu_allocator("train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from camvid.experiments.stages import run_job

    # stages=[train] by default; presets run [train, sample, eval] (docs/experiments.md). Training prints
    # the one "done:" line (rank 0); a failure raises, so the exit code is non-zero.
    summary = run_job(cfg)
    # the return value is what Hydra's sweepers optimise
    return float(summary["loss"])


if __name__ == "__main__":
    main()
