"""Cross-frame attention variants (temporal, full3d, epipolar_ref, epipolar, cross_video) as
pluggable modules, their memoised camera masks, exact dense, block-sparse and FlexAttention kernels, and a diffusers
processor adapter. See docs/performance.md (Attention) for speed and memory."""

from camvid.attention.context import MASK_KINDS, PATHS, AttentionContext
from camvid.attention.diffusers_adapter import ContextSlot, CrossFrameAttnProcessor
from camvid.attention.kernels import (
    chunked_masked_attention,
    dense_masked_attention,
    mask_to_neighbors,
    pad_mask_for_registers,
)
from camvid.attention.registry import VARIANTS, build_cross_frame_attention
from camvid.attention.sparse import TilePlan, build_tile_plan, tiled_sparse_attention
from camvid.attention.variants import (
    CrossFrameAttention,
    CrossVideoSyncModule,
    EpipolarAttention,
    EpipolarBlock,
    MultiHeadAttention,
    TemporalAttention,
    frames_from_temporal_tokens,
    temporal_tokens_from_frames,
)

__all__ = [
    "AttentionContext",
    "MASK_KINDS",
    "PATHS",
    "ContextSlot",
    "CrossFrameAttnProcessor",
    "chunked_masked_attention",
    "dense_masked_attention",
    "mask_to_neighbors",
    "pad_mask_for_registers",
    "VARIANTS",
    "build_cross_frame_attention",
    "TilePlan",
    "build_tile_plan",
    "tiled_sparse_attention",
    "CrossFrameAttention",
    "CrossVideoSyncModule",
    "EpipolarAttention",
    "EpipolarBlock",
    "MultiHeadAttention",
    "TemporalAttention",
    "frames_from_temporal_tokens",
    "temporal_tokens_from_frames",
]
