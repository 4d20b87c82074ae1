"""Evaluate a folder of generated samples: ``python src/evaluate.py samples_dir=DIR``.

Reads the layout ``src/sample.py`` writes (docs/evaluation.md), runs the CamI2V camera protocol,
CVD's geometry consistency and the quality metrics (FVD, FID, KID, CLIP-T, CLIP-F), and writes
results.md / results.csv / results.json (plus a W&B table when ``wandb.enabled``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# before torch loads OpenMP: how its waiting threads spin (docs/performance.md, "CPU threads")
from camvid.threads import set_openmp_wait  # noqa: E402

set_openmp_wait()
# CPU: freed large tensors' memory is kept for the next ones (docs/performance.md, "CPU allocator")
from camvid.allocator import choose_cpu_allocator  # noqa: E402

choose_cpu_allocator("evaluate")


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from camvid.evaluation.pipeline import run_evaluation
    from camvid.training.logger import finish_runs_on_exit
    from camvid.validation import validate_eval_config

    validate_eval_config(cfg)  # types, ranges, paths: before any video is read
    # every setting of conf/eval.yaml (and keys added to it) reaches the pipeline; paths are resolved into them
    settings = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in cfg if k not in ("paths", "hydra", "task_name")}
    with finish_runs_on_exit():  # the W&B results run (wandb.enabled) is finished even on failure
        result = run_evaluation(settings)
    print(result["markdown"])
    for kind, path in result["paths"].items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
