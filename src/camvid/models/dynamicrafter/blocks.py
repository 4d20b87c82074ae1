"""Building blocks of the lvdm 3-D UNet that DynamiCrafter (and its camera-controlled descendants)
use, with the official parameter names so released checkpoints load with ``strict=True``.

Layouts follow Doubiiu/DynamiCrafter ``lvdm/modules/{attention.py,networks/openaimodel3d.py}``.
Two names look odd but are kept on purpose because they are checkpoint keys: ``temopral_conv``
(sic) and ``attn2.alpha``.

Tensor layout inside the UNet: ``(B*T, C, H, W)`` for the 2-D layers, ``(B, C, T, H, W)`` for the
temporal ones. Attention always goes through ``F.scaled_dot_product_attention`` (same maths as the
official einsum path; the official ``scale = d_head**-0.5`` is SDPA's default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from camvid.layers import FeedForward


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding ``[cos, sin]`` (lvdm order: cosine first) of integer or float steps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (the lvdm ``normalization``), so fp16/bf16 runs stay stable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# --------------------------------------------------------------------------- attention

def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h n d -> b n (h d)")


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when no context is given.

    With ``image_cross_attention`` the context is a pair ``(text, image)`` and the image tokens get
    their own key/value projections (``to_k_ip``/``to_v_ip``); the two attention results are added,
    the image one scaled by ``image_cross_attention_scale`` and, if learnable, by
    ``tanh(alpha) + 1`` with ``alpha`` initialised at 0 (DynamiCrafter 256).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0, image_cross_attention: bool = False,
                 image_cross_attention_scale: float = 1.0, image_cross_attention_scale_learnable: bool = False):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.context_dim = context_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.image_cross_attention = image_cross_attention
        self.image_cross_attention_scale = image_cross_attention_scale
        self.image_cross_attention_scale_learnable = image_cross_attention_scale_learnable
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
            if image_cross_attention_scale_learnable:
                self.alpha = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | tuple | None = None) -> torch.Tensor:
        image = None
        if isinstance(context, tuple):
            context, image = context
        source = x if context is None else context
        out = _heads_attention(self.to_q(x), self.to_k(source), self.to_v(source), self.heads)
        if self.image_cross_attention and image is not None:
            out_ip = _heads_attention(self.to_q(x), self.to_k_ip(image), self.to_v_ip(image), self.heads)
            scale = self.image_cross_attention_scale
            if self.image_cross_attention_scale_learnable:
                scale = scale * (torch.tanh(self.alpha) + 1)
            out = out + scale * out_ip
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """``attn1`` (self) -> ``attn2`` (cross, or self in temporal blocks) -> gated FF, pre-norm."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 dropout: float = 0.0, image_cross_attention: bool = False,
                 image_cross_attention_scale_learnable: bool = False):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout,
                                    image_cross_attention=image_cross_attention,
                                    image_cross_attention_scale_learnable=image_cross_attention_scale_learnable)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context=None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame attention over the ``H*W`` tokens; cross-attends to text (+ image) tokens."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0,
                 use_linear: bool = True, image_cross_attention: bool = False,
                 image_cross_attention_scale_learnable: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(
            inner, heads, dim_head, context_dim, dropout, image_cross_attention,
            image_cross_attention_scale_learnable)])
        out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)
        self.proj_out = zero_module(out)

    def forward(self, x: torch.Tensor, context) -> torch.Tensor:
        _, _, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "n c h w -> n (h w) c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "n (h w) c -> n c h w", h=h, w=w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


@dataclass
class TemporalCamera:
    """Camera inputs of one temporal transformer (already at its resolution).

    ``rt``: (B, T, 12) flattened relative w2c ``[R|t]`` (MotionCtrl).
    ``pose_features``: (B, C, T, h, w) pose-encoder features of this level (CameraCtrl, CamI2V).
    ``attention_context``: per-batch context for the CamI2V cross-frame attention (masks etc.).
    """

    rt: torch.Tensor | None = None
    pose_features: torch.Tensor | None = None
    attention_context: object | None = None


class TemporalBasicTransformerBlock(BasicTransformerBlock):
    """The transformer block of a ``TemporalTransformer``: tokens are ``(B*h*w, T, C)``.

    Camera methods attach their modules as children with the official names, and the forward
    applies them exactly where the official code does (see ``camvid.models.camera.injection``):

    * MotionCtrl  (``cc_projection``, Linear C+12 -> C): after ``attn1``, ``x = cc([x, RT])``.
    * CameraCtrl  (``cc_projection``, Linear C -> C):  ``attn1(n + cc(n + f))`` with ``n = norm1(x)``.
    * CamI2V      (``pluker_projection`` [+ ``epipolar``]): ``z = proj(n + f) + epipolar(n + f)``,
      then ``x = z + attn1(n) + x`` ("add_to_main_branch", the released configs) or
      ``attn1(n + z) + x`` ("add_into_temporal_attn").
    """

    camera_mode: str | None = None
    cami2v_add_type: str = "add_to_main_branch"

    def forward(self, x: torch.Tensor, context=None, camera: TemporalCamera | None = None,
                hw: tuple[int, int] | None = None) -> torch.Tensor:
        mode = self.camera_mode if camera is not None else None
        n = self.norm1(x)
        if mode == "cameractrl":
            f = rearrange(camera.pose_features, "b c t h w -> (b h w) t c")
            x = self.attn1(n + self.cc_projection(n + f)) + x
        elif mode == "cami2v":
            x = self._cami2v_attn1(x, n, camera, hw)
        else:
            x = self.attn1(n) + x
        if mode == "motionctrl":
            rt = camera.rt.repeat_interleave(x.shape[0] // camera.rt.shape[0], dim=0)
            x = self.cc_projection(torch.cat([x, rt.to(x.dtype)], dim=-1))
        x = self.attn2(self.norm2(x)) + x
        return self.ff(self.norm3(x)) + x

    def _cami2v_attn1(self, x, n, camera: TemporalCamera, hw) -> torch.Tensor:
        f = camera.pose_features
        cond = n if f is None else n + rearrange(f, "b c t h w -> (b h w) t c")
        z = torch.zeros_like(n)
        if f is not None:
            z = z + self.pluker_projection(cond)
        if hasattr(self, "epipolar"):
            # the cross-frame module works on (B, T, h*w, C): all frames' tokens at once
            frames = rearrange(cond, "(b hw) t c -> b t hw c", hw=hw[0] * hw[1])
            delta = self.epipolar(frames, camera.attention_context, hw)
            z = z + rearrange(delta, "b t hw c -> (b hw) t c")
        if self.cami2v_add_type == "add_to_main_branch":
            return z + self.attn1(n) + x
        return self.attn1(n + z) + x


class TemporalTransformer(nn.Module):
    """Attention along time at every spatial position: ``(B, C, T, H, W)`` in and out."""

    def __init__(self, channels: int, heads: int, dim_head: int, dropout: float = 0.0, use_linear: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv1d(channels, inner, 1)
        # only_self_att: attn2 is a second self-attention (context_dim None), as in all configs.
        self.transformer_blocks = nn.ModuleList([TemporalBasicTransformerBlock(inner, heads, dim_head,
                                                                               None, dropout)])
        out = nn.Linear(inner, channels) if use_linear else nn.Conv1d(inner, channels, 1)
        self.proj_out = zero_module(out)

    def forward(self, x: torch.Tensor, camera: TemporalCamera | None = None) -> torch.Tensor:
        b, _, t, h, w = x.shape
        x_in = x
        x = rearrange(self.norm(x), "b c t h w -> (b h w) c t")
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "n c t -> n t c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, camera=camera, hw=(h, w))
        if self.use_linear:
            x = self.proj_out(x)
            return rearrange(x, "(b h w) t c -> b c t h w", b=b, h=h, w=w) + x_in
        x = self.proj_out(rearrange(x, "n t c -> n c t"))
        return rearrange(x, "(b h w) c t -> b c t h w", b=b, h=h, w=w) + x_in


# --------------------------------------------------------------------------- convolutions

class TemporalConvBlock(nn.Module):
    """Four (3,1,1) temporal convolutions with a residual; the last is zero-initialised."""

    def __init__(self, channels: int, dropout: float = 0.1):
        super().__init__()
        k, p = (3, 1, 1), (1, 0, 0)
        self.conv1 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv3d(channels, channels, k, padding=p))
        self.conv2 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout),
                                   nn.Conv3d(channels, channels, k, padding=p))
        self.conv3 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout),
                                   nn.Conv3d(channels, channels, k, padding=p))
        self.conv4 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout),
                                   zero_module(nn.Conv3d(channels, channels, k, padding=p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with the time embedding added in between, optionally
    followed by a ``TemporalConvBlock`` (``temopral_conv``, the official spelling)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 temporal_conv: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))
        if temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels, dropout=0.1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, batch_size: int) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if hasattr(self, "temopral_conv"):
            h = rearrange(h, "(b t) c h w -> b c t h w", b=batch_size)
            h = rearrange(self.temopral_conv(h), "b c t h w -> (b t) c h w")
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
