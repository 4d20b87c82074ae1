"""CVD's cross-video synchronisation on DynamiCrafter: multi-view image-to-video from one image.

CVD runs one sync module (``camvid.attention.CrossVideoSyncModule``: frame t of a video attends
the epipolar band of frame t of its partner) right after every AnimateDiff motion module. On
DynamiCrafter the counterpart of a motion module is the ``TemporalTransformer`` after each spatial
transformer (``init_attn`` excluded, as CameraCtrl on DynamiCrafter): a forward hook adds the sync
module's residual update to its output. The modules live in ``model.diffusion_model.epi_modules``
(zero-initialised output, so a fresh model is the camera model it sits on). Pairs are interleaved
along the batch, ``[a0, b0, a1, b1, ...]``, as in the AnimateDiff CVD; the masks come from
:class:`camvid.models.cvd.sync.CrossVideoSync`.
"""

from __future__ import annotations

import inspect

import torch
from einops import rearrange
from torch import nn

from camvid.attention import AttentionContext, build_cross_frame_attention
from camvid.models.cvd.sync import CrossVideoSync

__all__ = ["install_cvd_on_dynamicrafter"]


class _AfterTemporalTransformer:
    """Forward hook (an object: deep copies stay self-consistent)."""

    def __init__(self, sync: CrossVideoSync, epi: nn.Module):
        self.sync = sync
        self.epi = epi

    def __call__(self, module, args, output: torch.Tensor) -> torch.Tensor:
        b, t = output.shape[0], output.shape[2]
        frames = rearrange(output, "b c t h w -> (b t) c h w")
        return rearrange(self.sync.run(self.epi, frames), "(b t) c h w -> b c t h w", b=b, t=t)


def install_cvd_on_dynamicrafter(unet, heads: int | None = None, max_feat_size: int = 64,
                                 num_attention_blocks: int = 2, **options) -> CrossVideoSync:
    """Hang one sync module after every temporal transformer of ``unet`` (a ``DynamiCrafterUNet``).
    ``options``: the ``attn=cross_video`` keys :class:`CrossVideoSync` takes (tau, masked, path, seed, ...)."""
    from camvid.models.dynamicrafter.blocks import TemporalTransformer

    valid = [p for p in inspect.signature(CrossVideoSync.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown cross_video options {unknown}; valid: {', '.join(valid)}, heads, max_feat_size, "
                         "num_attention_blocks")
    if int(num_attention_blocks) < 1:
        raise ValueError(f"attn.num_attention_blocks={num_attention_blocks}: must be >= 1")
    sync = CrossVideoSync(**options)
    AttentionContext(path=sync.path)  # an unknown path fails now, not in the first forward
    sites = [m for name, m in unet.named_modules()
             if isinstance(m, TemporalTransformer) and not name.startswith("init_attn")]
    modules = []
    for tt in sites:
        channels = tt.norm.num_channels
        ref = tt.norm.weight
        with torch.device(ref.device):
            modules.append(build_cross_frame_attention(
                "cross_video", channels, heads or tt.transformer_blocks[0].attn1.heads,
                norm_num_groups=tt.norm.num_groups, max_feat_size=max_feat_size,
                num_attention_blocks=int(num_attention_blocks)).to(ref.dtype))
    unet.epi_modules = nn.ModuleList(modules)
    for tt, epi in zip(sites, unet.epi_modules):
        tt.register_forward_hook(_AfterTemporalTransformer(sync, epi))
        sync.modules.append(epi)
    return sync
