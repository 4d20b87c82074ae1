"""Sample a few videos during training (main process) and log them as GIFs."""

from __future__ import annotations

from pathlib import Path

import torch

from camvid.viz.video import to_uint8_video, write_gif

__all__ = ["log_preview"]


def _first(batch: dict, n: int) -> dict:
    out = {}
    for k, v in batch.items():
        out[k] = v[:n] if isinstance(v, (torch.Tensor, list)) else v
    return out


@torch.no_grad()
def log_preview(method, batch: dict, cfg, run_dir: Path, step: int, logger) -> list[Path]:
    """Sample ``trainer.sample_num`` videos with the batch's cameras; GIFs (sample | ground truth)."""
    from camvid.sampling import generate

    views = int(batch.get("num_views", 1))
    n = max(1, int(cfg.trainer.sample_num)) * views
    sub = _first(batch, n)
    was_training = method.training
    method.eval()
    video = generate(method, cfg, sub, seed=int(cfg.seed), steps=int(cfg.trainer.sample_steps))
    method.train(was_training)
    out_dir = Path(run_dir) / "previews"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(video.shape[0]):
        side_by_side = torch.cat([video[i], sub["video"][i].to(video)], dim=-1)
        path = out_dir / f"step{step:08d}_{i}.gif"
        write_gif(path, to_uint8_video(side_by_side))
        logger.log_video(f"preview/{i}", path, step=step, caption=sub["caption"][i])
        paths.append(path)
    return paths
