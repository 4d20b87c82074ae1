"""Videos as files: model tensors to uint8 frames, and GIFs (training previews, samples, the demo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["to_uint8_video", "write_gif"]


def to_uint8_video(video: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    v = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 1).cpu().numpy()


def write_gif(path: str | Path, video: np.ndarray, fps: float = 8.0) -> None:
    """uint8 (T, H, W, 3) -> a looping GIF at ``fps``."""
    import imageio.v2 as imageio

    imageio.mimsave(str(path), list(video), duration=1.0 / fps, loop=0)
