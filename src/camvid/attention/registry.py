"""Name -> constructor for the cross-frame attention variants (the ``attn`` config group)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from camvid.attention.variants import CrossVideoSyncModule, EpipolarBlock, TemporalAttention

__all__ = ["VARIANTS", "build_cross_frame_attention"]

VARIANTS: dict[str, Callable[..., nn.Module]] = {
    "temporal": lambda dim, heads, **kw: TemporalAttention(dim, heads, **kw),
    "full3d": lambda dim, heads, **kw: EpipolarBlock(dim, heads, mode="full", **kw),
    "epipolar_ref": lambda dim, heads, **kw: EpipolarBlock(dim, heads, mode="ref", **kw),
    "epipolar": lambda dim, heads, **kw: EpipolarBlock(dim, heads, mode="all", **kw),
    "cross_video": lambda dim, heads, **kw: CrossVideoSyncModule(dim, heads, **kw),
}


def build_cross_frame_attention(variant: str, dim: int, heads: int, **kw) -> nn.Module:
    """Build one variant; ``kw`` goes to its constructor (e.g. ``num_register_tokens`` for epipolar)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown cross-frame attention variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return VARIANTS[variant](dim, heads, **kw)
