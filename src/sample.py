"""Sample videos from a trained run.

Single video: ``python src/sample.py ckpt_path=RUN/checkpoints/step_N image=cond.png trajectory=orbit``
-> ``video.mp4`` + ``video.gif`` with ``cameras.txt`` (the trajectory and intrinsics) beside them.
Batch mode over a test list: ``python src/sample.py run_dir=RUN test_data=DATA_ROOT num_samples=8``
-> one folder per sample in the layout ``src/evaluate.py`` reads (docs/evaluation.md); ``protocol.pairs=true``
``protocol.prompts=webvid protocol.prompts_path=webvid.csv`` samples CVD's WebVid-prompt trajectory pairs
(docs/evaluation.md "Sampling protocols").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# before torch loads OpenMP: how its waiting threads spin (docs/performance.md, "CPU threads")
from camvid.threads import set_openmp_wait  # noqa: E402

set_openmp_wait()
# CPU: freed large tensors' memory is kept for the next ones (docs/performance.md, "CPU allocator")
from camvid.allocator import choose_cpu_allocator  # noqa: E402

choose_cpu_allocator("sample")


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from camvid.sampling import run_sampling
    from camvid.validation import validate_sample_config

    validate_sample_config(cfg)  # types, ranges, paths: before the model is built
    written = run_sampling(cfg)
    print(f"wrote {len(written)} sample(s) under {cfg.out_dir}")
    for path in written:
        print(f"  {path}")


if __name__ == "__main__":
    main()
