"""What a sampling-only method is: released systems run through their diffusers pipelines, wrapped
so :func:`camvid.sampling.sample_test_clip` writes their videos in the samples layout like any
trained method's (``meta.json`` with ``paper_row``, cameras, ``group``/``view`` for pairs)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["SamplingOnlyMethod", "first_frame_image", "pair_indices", "to_signed"]


class SamplingOnlyMethod(nn.Module):
    """A method that samples but never trains (``sampling_only``): ``generate(batch, seed, steps,
    guidance)`` returns the batch's videos, (N, T, 3, H, W) in [-1, 1], in the batch's order.

    The CVD protocol for single-video baselines (arXiv 2405.17414, Sec. 5.1, cross-video consistency):
    the text-to-video model renders view 0 of a pair, and the image-to-video version renders view 1
    from view 0's first frame. Batches hold interleaved pairs ``[a0, b0, a1, b1, ...]``."""

    sampling_only = True
    image_to_video = False
    parameterization = "eps"

    def generate(self, batch: dict, *, seed: int, steps: int | None = None, guidance: dict | None = None):
        raise NotImplementedError

    def freeze_base(self) -> None:  # nothing trains
        self.requires_grad_(False)

    def encoder_modules(self) -> list[nn.Module]:
        return []


def pair_indices(batch: dict) -> list[tuple[int, int]]:
    """(view 0, view 1) indices of every pair of an interleaved pair batch."""
    views = int(batch.get("num_views", 1))
    n = int(batch["K"].shape[0])
    if views != 2 or n % 2:
        raise ValueError(f"the sampling-only baselines render video pairs (num_views=2, [a0, b0, a1, b1, ...]); "
                         f"batch has num_views={views} and {n} videos; use data=re10k_fold")
    return [(i, i + 1) for i in range(0, n, 2)]


def to_signed(frames01: torch.Tensor) -> torch.Tensor:
    """A pipeline's ``output_type="pt"`` video, (T, 3, H, W) in [0, 1] -> [-1, 1] float."""
    return frames01.float().clamp(0, 1) * 2 - 1


def first_frame_image(video: torch.Tensor):
    """Frame 0 of a (T, 3, H, W) video in [-1, 1] as an RGB PIL image: the still image the
    image-to-video half of a pair starts from (quantised to 8 bits, as a saved frame would be)."""
    from PIL import Image

    frame = ((video[0].detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(frame.permute(1, 2, 0).cpu().numpy()))
