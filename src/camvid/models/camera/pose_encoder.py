"""``CameraPoseEncoder``: CameraCtrl's Plücker-ray encoder, in the official parameter layout.

Plücker maps (B, T, 6, H, W) at the generation resolution are pixel-unshuffled by
``downscale_factor`` (8 = the VAE factor, so level 0 lands on the latent grid), then each level
runs ``nums_rb`` residual conv blocks, each followed by a temporal self-attention transformer over
the T frames of every pixel. Level ``i > 0`` starts by average-pooling 2x, so level ``i`` matches
the UNet level ``i`` (``H / (8 * 2**i)``). Output: one (B, C_i, T, h_i, w_i) tensor per level, the
layout ``DynamiCrafterUNet`` consumes.

Names match ``pose_encoder.*`` of CamI2V / CameraCtrl (``encoder_down_conv_blocks.i.j.{in_conv,
block1,block2}``, ``encoder_down_attention_blocks.i.j.{attention_blocks.0.{to_q,to_k,to_v,to_out.0,
pos_encoder.pe},norms.0,ff,ff_norm}``, ``encoder_conv_in``). Full size: 199,262,400 parameters.

``fourier_bands`` (0, the released layout; ``backbone.kwargs.pose_fourier_bands`` sets it): each Plücker channel
``x`` is given with ``sin`` / ``cos`` of ``2^k pi x`` for ``k < fourier_bands`` beside it, so
``encoder_conv_in`` reads ``6 (1 + 2 fourier_bands)`` channels per pixel. Why: a cross-frame
attention finds a query's match by a dot product of features derived from the rays, and from raw,
smooth rays neighbouring cells differ by a fraction of a percent, so a peak on the match needs weights
that a few hundred optimiser steps cannot grow; with the Fourier channels the same peak needs weights
of order one. Measured on the tiny CPU world in docs/diffusion.md ("Does the epipolar attention find
the match?"); an experiment option, off by default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from camvid.layers import FeedForward


class PositionalEncoding(nn.Module):
    """Sinusoidal frame-index encoding; ``pe`` is a persistent buffer (it is in the checkpoints)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div)
        pe[0, :, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the pose encoder's temporal_position_encoding_max_len "
                             f"{self.pe.shape[1]}")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalSelfAttention(nn.Module):
    """diffusers-style ``Attention`` (no q/k/v bias) with the positional encoding added to its input."""

    def __init__(self, dim: int, heads: int, max_len: int | None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(dim, max_len) if max_len else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        q, k, v = (rearrange(p(x), "n t (h d) -> n h t d", h=self.heads) for p in (self.to_q, self.to_k, self.to_v))
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "n h t d -> n t (h d)")
        return self.to_out[1](self.to_out[0](out))


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int | None):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalSelfAttention(dim, heads, max_len)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class ResnetBlock(nn.Module):
    """T2I-Adapter residual block: [avg-pool] -> [in_conv] -> conv3x3 -> ReLU -> conv(ksize) + skip."""

    def __init__(self, in_c: int, out_c: int, down: bool, ksize: int = 1, sk: bool = True):
        super().__init__()
        pad = ksize // 2
        self.down = down
        self.in_conv = nn.Conv2d(in_c, out_c, ksize, 1, pad) if (in_c != out_c or not sk) else None
        self.block1 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_c, out_c, ksize, 1, pad)
        self.skep = None if sk else nn.Conv2d(in_c, out_c, ksize, 1, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2, 2)
        if self.in_conv is not None:
            x = self.in_conv(x)
        h = self.block2(self.act(self.block1(x)))
        return h + (x if self.skep is None else self.skep(x))


class CameraPoseEncoder(nn.Module):
    def __init__(self, downscale_factor: int = 8, channels: tuple[int, ...] = (320, 640, 1280, 1280),
                 nums_rb: int = 2, ksize: int = 1, sk: bool = True, temporal_attention_nhead: int = 8,
                 temporal_position_encoding: bool = True, temporal_position_encoding_max_len: int = 16,
                 fourier_bands: int = 0):
        super().__init__()
        if nums_rb < 1:
            raise ValueError(f"CameraPoseEncoder nums_rb must be >= 1, got {nums_rb}")
        if fourier_bands < 0:
            raise ValueError(f"CameraPoseEncoder fourier_bands must be >= 0, got {fourier_bands}")
        self.fourier_bands = int(fourier_bands)
        self.downscale_factor = downscale_factor
        self.channels = tuple(channels)
        max_len = temporal_position_encoding_max_len if temporal_position_encoding else None
        self.encoder_down_conv_blocks = nn.ModuleList()
        self.encoder_down_attention_blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            convs, attns = nn.ModuleList(), nn.ModuleList()
            for j in range(nums_rb):
                in_c = (channels[i - 1] if i else channels[0]) if j == 0 else ch
                convs.append(ResnetBlock(in_c, ch, down=(j == 0 and i > 0), ksize=ksize, sk=sk))
                attns.append(TemporalTransformerBlock(ch, temporal_attention_nhead, max_len))
            self.encoder_down_conv_blocks.append(convs)
            self.encoder_down_attention_blocks.append(attns)
        in_channels = 6 * (1 + 2 * self.fourier_bands)
        self.encoder_conv_in = nn.Conv2d(in_channels * downscale_factor ** 2, channels[0], 3, 1, 1)

    def fourier(self, plucker: torch.Tensor) -> torch.Tensor:
        """(B, T, 6, H, W) -> (B, T, 6 (1 + 2 F), H, W): the rays, then sin, then cos of 2^k pi x."""
        if not self.fourier_bands:
            return plucker
        freqs = math.pi * 2.0 ** torch.arange(self.fourier_bands, device=plucker.device, dtype=plucker.dtype)
        x = (plucker.unsqueeze(3) * freqs.view(-1, 1, 1)).flatten(2, 3)  # (B, T, 6 F, H, W), channel-major
        return torch.cat([plucker, x.sin(), x.cos()], dim=2)

    def forward(self, plucker: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, 6, H, W) Plücker maps -> [(B, C_i, T, H/(f 2^i), W/(f 2^i)) for each level i]."""
        if plucker.ndim != 5 or plucker.shape[2] != 6:
            raise ValueError(f"CameraPoseEncoder expects Plücker maps (B, T, 6, H, W), got {tuple(plucker.shape)}")
        b, t = plucker.shape[:2]
        f = self.downscale_factor
        if plucker.shape[-2] % f or plucker.shape[-1] % f:
            raise ValueError(f"Plücker size {plucker.shape[-2]}x{plucker.shape[-1]} not divisible by "
                             f"downscale_factor {f}")
        x = self.encoder_conv_in(F.pixel_unshuffle(rearrange(self.fourier(plucker), "b t c h w -> (b t) c h w"), f))
        features = []
        for convs, attns in zip(self.encoder_down_conv_blocks, self.encoder_down_attention_blocks):
            for conv, attn in zip(convs, attns):
                x = conv(x)
                h, w = x.shape[-2:]
                x = attn(rearrange(x, "(b t) c h w -> (b h w) t c", b=b))
                x = rearrange(x, "(b h w) t c -> (b t) c h w", b=b, h=h, w=w)
            features.append(rearrange(x, "(b t) c h w -> b c t h w", b=b, t=t))
        return features
