"""Image-token projectors of DynamiCrafter (``image_proj_model.*``).

``Resampler`` is the perceiver resampler DynamiCrafter uses on the OpenCLIP ViT-H image tokens
(257 x 1280): learned latent queries (``num_queries`` per frame, times ``video_length`` when set,
so every frame gets its own image tokens) attend to the image tokens plus themselves.
``ImageProjModel`` is the simpler IP-Adapter projection of one pooled embedding to a few tokens.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class ImageProjModel(nn.Module):
    def __init__(self, cross_attention_dim: int = 1024, clip_embeddings_dim: int = 1024,
                 clip_extra_context_tokens: int = 4):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.clip_extra_context_tokens = clip_extra_context_tokens
        self.proj = nn.Linear(clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(B, clip_embeddings_dim) -> (B, clip_extra_context_tokens, cross_attention_dim)."""
        tokens = self.proj(image_embeds.to(self.proj.weight.dtype))
        return self.norm(tokens.reshape(-1, self.clip_extra_context_tokens, self.cross_attention_dim))


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.dim_head = dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        # scale split over q and k (the official fp16-friendly form); softmax in float32
        scale = self.dim_head ** -0.25
        weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).type(q.dtype)
        return self.to_out(rearrange(weight @ v, "b h n d -> b n (h d)"))


def _resampler_ff(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class Resampler(nn.Module):
    def __init__(self, dim: int = 1024, depth: int = 4, dim_head: int = 64, heads: int = 12,
                 num_queries: int = 16, embedding_dim: int = 1280, output_dim: int = 1024, ff_mult: int = 4,
                 video_length: int | None = 16):
        super().__init__()
        self.num_queries = num_queries
        self.video_length = video_length
        total = num_queries * (video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, total, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), _resampler_ff(dim, ff_mult)])
            for _ in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, embedding_dim) image tokens -> (B, T, num_queries, output_dim) with ``video_length``
        (one token set per frame), else (B, num_queries, output_dim)."""
        latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        out = self.norm_out(self.proj_out(latents))
        if self.video_length is not None:
            out = rearrange(out, "b (t n) d -> b t n d", t=self.video_length)
        return out


def resampler_config(size: str) -> dict:
    """Constructor arguments of the released resampler and of the CPU ``"tiny"`` one."""
    if size in ("256", "512"):
        return {}
    if size == "tiny":
        return dict(dim=64, depth=1, dim_head=16, heads=4, num_queries=4, embedding_dim=64, output_dim=64,
                    ff_mult=2)
    raise ValueError(f"unknown DynamiCrafter size {size!r}; choose tiny, 256 or 512")
