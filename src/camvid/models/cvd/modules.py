"""CVD's cross-video synchronisation module (``EpiModule``), in the official parameter layout.

One module sits after every AnimateDiff motion module (CollaborativeVideoDiffusion/CVD,
``animatediff/models/epi_module.py``):

    epi_transformer.norm                      GroupNorm over each frame (eps 1e-6)
    epi_transformer.proj_in                   Linear(C, C)
    epi_transformer.transformer_blocks.0
        attention_blocks.{0,1}                cross-video attention (to_q, to_k, to_v without bias,
                                              to_out.0), ``pos_encoder.coords`` buffer
        norms.{0,1}                           pre-norm of each attention
        ff, ff_norm                           GEGLU feed-forward (4x), its pre-norm
    epi_transformer.proj_out                  Linear(C, C), zero-initialised

Tokens are the ``h*w`` cells of one frame; *both* attention blocks are cross-video ("Epi_Self" in
CVD's config): frame t of video a queries the cells of frame t of its partner video b (keys and
values come from the partner only) under the epipolar band mask, and vice versa. Nothing here
attends over time; the motion modules before it do that. The residual around the transformer and
the zero ``proj_out`` make a fresh module an exact identity.

``pos_encoder.coords`` is CVD's integer pixel grid (64 x 64 x 3). Our masks come from
``camvid.geometry`` (float64 line distances at the true feature-cell centres), so the buffer takes no
part in the computation; it is kept, persistent, only so CVD.ckpt's full UNet state dict loads
strictly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.attention import FeedForward
from einops import rearrange
from torch import nn

__all__ = ["EpiModule", "EpiTransformer", "EpiTransformerBlock", "EpiAttention", "EpiCoords"]

# (q, k, v) as (B', heads, L, d) with the pair layout resolved -> (B', heads, L, d); supplied per call
# by the sync context (mask lookup + kernel choice).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


class EpiCoords(nn.Module):
    """CVD's ``pos_encoder``: only its persistent ``coords`` buffer (see the module docstring)."""

    def __init__(self, max_feat_size: int = 64):
        super().__init__()
        grid = torch.arange(max_feat_size)
        xs, ys = torch.meshgrid(grid, grid, indexing="xy")
        self.register_buffer("coords", torch.stack([xs, ys, torch.ones_like(xs)], dim=-1))


class EpiAttention(nn.Module):
    """Multi-head attention whose keys/values are the partner video's tokens of the same frame."""

    def __init__(self, dim: int, heads: int, max_feat_size: int = 64):
        super().__init__()
        if dim % heads:
            raise ValueError(f"EpiAttention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = EpiCoords(max_feat_size)

    def forward(
        self, x: torch.Tensor, partner_rows: torch.Tensor, feat_hw: tuple[int, int], attend: AttentionFn
    ) -> torch.Tensor:
        """x (B*T, h*w, C); ``partner_rows`` (B*T,) the row holding the same frame of the partner."""
        partner = x[partner_rows]
        q, k, v = (
            rearrange(proj(src), "n l (h d) -> n h l d", h=self.heads)
            for proj, src in ((self.to_q, x), (self.to_k, partner), (self.to_v, partner))
        )
        out = rearrange(attend(q, k, v, feat_hw), "n h l d -> n l (h d)")
        return self.to_out[1](self.to_out[0](out))


class EpiTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, num_attention_blocks: int = 2, max_feat_size: int = 64):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [EpiAttention(dim, heads, max_feat_size) for _ in range(num_attention_blocks)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, partner_rows, feat_hw, attend):
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), partner_rows, feat_hw, attend) + x
        return self.ff(self.ff_norm(x)) + x


class EpiTransformer(nn.Module):
    def __init__(self, channels: int, heads: int = 8, norm_num_groups: int = 32, max_feat_size: int = 64):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([EpiTransformerBlock(channels, heads, 2, max_feat_size)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, partner_rows: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
        """x (B*T, C, h, w) -> same shape."""
        h, w = x.shape[-2:]
        tokens = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))
        for block in self.transformer_blocks:
            tokens = block(tokens, partner_rows, (h, w), attend)
        # contiguous: a channels-last-strided sum would steer the next convolutions onto other
        # kernels, and a zero-initialised module would no longer be an exact identity
        return x + rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=h, w=w).contiguous()


class EpiModule(nn.Module):
    """CVD's ``EpiModule``: an :class:`EpiTransformer` whose ``proj_out`` starts at zero."""

    def __init__(self, channels: int, heads: int = 8, norm_num_groups: int = 32, max_feat_size: int = 64,
                 zero_initialize: bool = True):
        super().__init__()
        self.epi_transformer = EpiTransformer(channels, heads, norm_num_groups, max_feat_size)
        if zero_initialize:
            nn.init.zeros_(self.epi_transformer.proj_out.weight)
            nn.init.zeros_(self.epi_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor, partner_rows: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
        return self.epi_transformer(x, partner_rows, attend)
