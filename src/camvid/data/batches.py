"""From loader batches to model batches: uint8 video is moved first, then normalised on the device.

Loader workers return ``video`` as uint8 ``(B, T, 3, H, W)`` (a quarter of float32's bytes through
the worker queues and pinned copies); the model layout of :mod:`camvid.models.base` wants float32
in [-1, 1]. :func:`to_device` does the conversion after the copy, so it runs on the GPU.
"""

from __future__ import annotations

import torch

__all__ = ["normalize_video", "to_device"]


def normalize_video(video: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> contiguous float32 [-1, 1]; float input is returned unchanged (already normalised)."""
    if video.dtype == torch.uint8:
        return video.float().div_(127.5).sub_(1.0).contiguous()
    return video


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Tensors to ``device`` (non-blocking), then ``video`` normalised there."""
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if isinstance(out.get("video"), torch.Tensor):
        out["video"] = normalize_video(out["video"])
    return out
