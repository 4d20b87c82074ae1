"""The five cross-frame attention variants.

Every variant is an ``nn.Module`` with one forward signature::

    delta = module(x, ctx, feat_hw)     # x, delta: (B, T, h*w, C)

``x`` holds the features of T frames of an ``h x w`` map in row-major cell order; ``ctx`` is the
forward's ``AttentionContext`` (cameras + memoised masks; ``temporal`` and ``full3d`` accept None).
The return value is a residual update: each variant's last projection starts at zero, so a fresh
module returns exactly 0 and adding it leaves the base model bit-identical.

DynamiCrafter's temporal transformer works on ``(B*h*w, T, C)`` tokens (cells batch-major, frames
as the sequence); ``frames_from_temporal_tokens`` / ``temporal_tokens_from_frames`` convert.

Parameter names follow the official checkpoints so they load strictly:
- ``EpipolarBlock.epipolar_attn.{register_tokens, to_q, to_k, to_v, to_out.0}`` is CamI2V's
  ``transformer_blocks.0.epipolar`` (``epipolar``, ``epipolar_ref`` and ``full3d`` all use it).
- ``CrossVideoSyncModule.epi_transformer.*`` is CVD's ``epi_modules.N`` layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from camvid.attention.context import AttentionContext
from camvid.attention.hooks import active as capture_active
from camvid.attention.hooks import record as capture_record
from camvid.attention.kernels import chunked_masked_attention, dense_masked_attention
from camvid.attention.sparse import tiled_sparse_attention_packed
from camvid.layers import FeedForward

__all__ = [
    "CrossFrameAttention",
    "MultiHeadAttention",
    "EpipolarAttention",
    "EpipolarBlock",
    "TemporalAttention",
    "CrossViewAttention",
    "CrossVideoSyncModule",
    "frames_from_temporal_tokens",
    "temporal_tokens_from_frames",
]


def frames_from_temporal_tokens(x: torch.Tensor, batch: int) -> torch.Tensor:
    """DynamiCrafter temporal tokens (B*h*w, T, C), cells batch-major -> (B, T, h*w, C)."""
    n, t, c = x.shape
    if n % batch:
        raise ValueError(f"{n} temporal token rows are not a multiple of the batch size {batch}")
    return x.view(batch, n // batch, t, c).transpose(1, 2)


def temporal_tokens_from_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, T, h*w, C) -> DynamiCrafter temporal tokens (B*h*w, T, C)."""
    b, t, hw, c = x.shape
    return x.transpose(1, 2).reshape(b * hw, t, c)


def _check_frames(x: torch.Tensor, feat_hw: tuple[int, int], dim: int, who: str) -> None:
    if x.dim() != 4 or x.shape[-1] != dim or x.shape[2] != feat_hw[0] * feat_hw[1]:
        raise ValueError(
            f"{who} expects x of shape (B, T, h*w={feat_hw[0] * feat_hw[1]}, C={dim}), got {tuple(x.shape)}"
        )


class CrossFrameAttention(nn.Module):
    """Base class: ``forward(x (B, T, h*w, C), ctx, feat_hw) -> (B, T, h*w, C)`` residual update."""

    variant: str = ""

    def forward(self, x: torch.Tensor, ctx: AttentionContext | None, feat_hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, ctx, feat_hw)")

    def forward_temporal_tokens(self, x: torch.Tensor, ctx: AttentionContext | None,
                                feat_hw: tuple[int, int]) -> torch.Tensor:
        """Same update on DynamiCrafter's temporal-transformer tokens (B*h*w, T, C) -> (B*h*w, T, C)."""
        batch = x.shape[0] // (feat_hw[0] * feat_hw[1])
        return temporal_tokens_from_frames(self(frames_from_temporal_tokens(x, batch), ctx, feat_hw))


class MultiHeadAttention(nn.Module):
    """q/k/v projections (no bias), optional learned register tokens, zero-initialised ``to_out.0``.

    ``forward(x (N, Lq, C), context (N, Lk, C), ctx, kind, feat_hw)``: ``kind`` None is unmasked;
    otherwise ``ctx`` supplies the mask of that kind (dense SDPA or band gather, see ``ctx.path``).
    Register tokens are projected by ``to_k``/``to_v`` and prepended to the keys; every query sees
    them, which keeps rows with an empty mask defined (CamI2V).
    """

    def __init__(self, dim: int, heads: int, dim_head: int | None = None, num_register_tokens: int = 0,
                 context_dim: int | None = None, zero_init: bool = True):
        super().__init__()
        if heads < 1 or (dim_head is None and dim % heads):
            raise ValueError(f"dim={dim} is not divisible into heads={heads}")
        dim_head = dim_head or dim // heads
        context_dim = context_dim or dim
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.num_register_tokens = num_register_tokens
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))
        if num_register_tokens > 0:
            self.register_tokens = nn.Parameter(torch.randn(1, num_register_tokens, context_dim))
        if zero_init:
            nn.init.zeros_(self.to_out[0].weight)
            nn.init.zeros_(self.to_out[0].bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (N, L, H*D) -> (N, L, H, D)
        return t.view(*t.shape[:2], self.heads, self.dim_head)

    def project(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (N, Lq, H, D) and kv (N, R + Lk, 2, H, D): per sample the register tokens, then the keys;
        keys and values side by side.

        The same values as ``to_q(x)`` and ``to_k``/``to_v`` of the registers and the context, up
        to fp32 rounding, in fewer passes: the weights of ``to_k`` and ``to_v`` are concatenated at
        call time (a few hundred KiB, so no cache to keep in step with the parameters; autograd
        splits their gradients back) and applied in ONE matrix product over ``[registers,
        context]``, whose output already has the layout every kernel reads (no register ``cat`` of
        keys, no packing copy). ``to_q`` stays its own product even in self-attention: a q/k/v
        product would hand the kernels strided views whose gradients autograd assembles with extra
        full-size passes, which cost more in the backward pass than the fused forward saved
        (benchmarks/attention.py, projections rows). The parameters stay ``to_q``/``to_k``/``to_v``,
        as in the official checkpoints.
        """
        N, R = x.shape[0], self.num_register_tokens
        src = context
        if R:
            src = torch.cat([self.register_tokens.to(context.dtype).expand(N, -1, -1), context], dim=1)
        layers = (self.to_k, self.to_v)
        weight = torch.cat([lin.weight for lin in layers])
        bias = None
        if any(lin.bias is not None for lin in layers):
            bias = torch.cat([lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias
                              for lin in layers])
        kv = F.linear(src, weight, bias).view(N, src.shape[1], 2, self.heads, self.dim_head)
        return self._heads(self.to_q(x)), kv

    def forward(self, x: torch.Tensor, context: torch.Tensor, ctx: AttentionContext | None = None,
                kind: str | None = None, feat_hw: tuple[int, int] | None = None) -> torch.Tensor:
        N, Lq, _ = x.shape
        R = self.num_register_tokens
        q, kv = self.project(x, context)
        if capture_active():  # camvid.attention.capture: attention of chosen queries, for inspection
            reg_k = kv[:1, :R, 0].transpose(1, 2) if R else None  # (1, H, R, D)
            capture_record(self, q, kv[:, R:, 0], reg_k, ctx, kind, feat_hw)
        # q (N, Lq, H, D), kv (N, R + Lk, 2, H, D) and (ctx, kind, feat_hw) are final here.
        out = self._attend(q, kv, ctx, kind, feat_hw)
        return self.to_out(out.reshape(N, Lq, self.heads * self.dim_head))

    def _attend(self, q, kv, ctx, kind, feat_hw) -> torch.Tensor:
        """Dispatch to one exact kernel: q (N, Lq, H, D), kv (N, R + Lk, 2, H, D) -> (N, Lq, H, D)."""
        N, Lq = q.shape[:2]
        R = self.num_register_tokens
        Lk = kv.shape[1] - R
        if kind is not None and ctx is None:
            raise ValueError(f"masked attention ({kind!r}) needs an AttentionContext")
        path = "dense" if kind is None else ctx.choose_path(kind, feat_hw, N, Lq, Lk, q.device)
        if path == "sparse":
            return tiled_sparse_attention_packed(q, kv, ctx.tile_plan(kind, feat_hw), R)
        if path == "flex":
            from camvid.attention.flex import flex_masked_attention

            regs = (kv[:1, :R, 0].transpose(1, 2), kv[:1, :R, 1].transpose(1, 2)) if R else (None, None)
            return flex_masked_attention(q, kv[:, R:, 0], kv[:, R:, 1], ctx.flex_block_mask(kind, feat_hw, R), *regs)
        # (N, H, R + Lk, D) views, registers first: no copy
        qh, kh, vh = q.transpose(1, 2), kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        if path == "bias":  # soft band: one SDPA call with a float additive bias (registers get 0)
            bias = ctx.bias(kind, feat_hw)
            if bias.shape != (N, Lq, Lk):
                raise ValueError(f"{kind!r} bias at {feat_hw} has shape {tuple(bias.shape)}, expected {(N, Lq, Lk)}")
            bias = F.pad(bias, (self.num_register_tokens, 0)).to(qh.dtype)
            return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias.unsqueeze(1)).transpose(1, 2)
        if kind is not None and ctx.uses_runs(kind, feat_hw):
            # Mask rows are expanded from the memoised row runs one query chunk at a time, so the
            # (N, Lq, R + Lk) mask never exists as a whole.
            runs = ctx.runs(kind, feat_hw)
            shape = (runs.start.shape[0], runs.num_queries, runs.start.shape[2] * feat_hw[0] * feat_hw[1])
            if shape != (N, Lq, Lk):
                raise ValueError(f"{kind!r} mask at {feat_hw} has shape {shape}, expected {(N, Lq, Lk)} "
                                 "(rows, queries, keys)")
            return chunked_masked_attention(qh, kh, vh, runs.rows, self.num_register_tokens).transpose(1, 2)
        mask = row_valid = None
        if kind is not None:
            mask, row_valid = ctx.dense_mask(kind, feat_hw, self.num_register_tokens)
            if mask.shape != (N, Lq, kh.shape[2]):
                raise ValueError(
                    f"{kind!r} mask at {feat_hw} has shape {tuple(mask.shape)}, expected "
                    f"{(N, Lq, kh.shape[2])} (rows, queries, registers + keys)"
                )
        return dense_masked_attention(qh, kh, vh, mask, row_valid).transpose(1, 2)


class EpipolarAttention(MultiHeadAttention):
    """CamI2V's ``epipolar_attn``: params ``register_tokens`` [1, R, C], ``to_q/k/v.weight``, ``to_out.0``."""


class EpipolarBlock(CrossFrameAttention):
    """CamI2V's ``Epipolar`` wrapper: attention of every token over the frames' tokens (no norm, no residual).

    ``mode``: "all" (CamI2V: all frames along epipolar lines, default 4 registers), "ref" (CamCo-like:
    the reference frame ``ctx.cond_index`` only), "full" (3D full attention, unmasked). As in CamI2V the
    caller feeds the block's normalised input (plus the Plücker features) and adds the result to it.
    """

    MODES = {"all": "epipolar", "ref": "epipolar_ref", "full": "full3d"}

    def __init__(self, dim: int, heads: int, mode: str = "all", num_register_tokens: int | None = None,
                 dim_head: int | None = None):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown EpipolarBlock mode {mode!r}; valid: {', '.join(self.MODES)}")
        if num_register_tokens is None:
            num_register_tokens = 4 if mode == "all" else 0
        self.mode, self.dim = mode, dim
        self.variant = self.MODES[mode]
        self.epipolar_attn = EpipolarAttention(dim, heads, dim_head=dim_head, num_register_tokens=num_register_tokens)

    def forward(self, x: torch.Tensor, ctx: AttentionContext | None, feat_hw: tuple[int, int]) -> torch.Tensor:
        _check_frames(x, feat_hw, self.dim, self.variant)
        B, T, hw, C = x.shape
        tokens = x.reshape(B, T * hw, C)
        if self.mode == "full":
            out = self.epipolar_attn(tokens, tokens)
        elif self.mode == "all":
            out = self.epipolar_attn(tokens, tokens, ctx, "all", feat_hw)
        else:
            if ctx is None:
                raise ValueError("epipolar_ref needs an AttentionContext (cameras and cond_index)")
            ref = ctx.reference_index(B, x.device)
            context = x[torch.arange(B, device=x.device), ref]  # (B, hw, C)
            out = self.epipolar_attn(tokens, context, ctx, "ref", feat_hw)
        return out.view(B, T, hw, C)


class TemporalAttention(CrossFrameAttention):
    """Per-pixel attention over frames: each cell attends to the same cell in every frame."""

    variant = "temporal"

    def __init__(self, dim: int, heads: int, dim_head: int | None = None):
        super().__init__()
        self.dim = dim
        self.attn = MultiHeadAttention(dim, heads, dim_head=dim_head)

    def forward(self, x: torch.Tensor, ctx: AttentionContext | None, feat_hw: tuple[int, int]) -> torch.Tensor:
        _check_frames(x, feat_hw, self.dim, self.variant)
        B = x.shape[0]
        tokens = temporal_tokens_from_frames(x)
        return frames_from_temporal_tokens(self.attn(tokens, tokens), B)


# ---------------------------------------------------------------------------------------------- CVD


class EpiCoordinates(nn.Module):
    """Holds CVD's ``pos_encoder.coords`` buffer ([S, S, 3] int64 of (x, y, 1)) so checkpoints load
    strictly; masks themselves come from ``camvid.geometry`` through the context."""

    def __init__(self, max_feat_size: int = 64):
        super().__init__()
        xs, ys = torch.meshgrid(torch.arange(max_feat_size), torch.arange(max_feat_size), indexing="xy")
        self.register_buffer("coords", torch.stack([xs, ys, torch.ones_like(xs)], dim=-1))


class CrossViewAttention(MultiHeadAttention):
    """One CVD attention block: queries of one video, keys/values from its partners' same frame."""

    def __init__(self, dim: int, heads: int, max_feat_size: int = 64):
        super().__init__(dim, heads, zero_init=False)
        self.pos_encoder = EpiCoordinates(max_feat_size)


class CrossVideoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, num_attention_blocks: int = 2, max_feat_size: int = 64):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [CrossViewAttention(dim, heads, max_feat_size) for _ in range(num_attention_blocks)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, ctx: AttentionContext, feat_hw, partners: list[torch.Tensor],
                frames: int) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            n = norm(h)  # (B*T, hw, C)
            per_video = n.view(-1, frames, *n.shape[1:])
            context = [per_video[p].flatten(0, 1) for p in partners]  # gathers: no concatenation for one partner
            context = context[0] if len(context) == 1 else torch.cat(context, dim=1)
            h = h + attn(n, context, ctx, "cross", feat_hw)
        return h + self.ff(self.ff_norm(h))


class EpiTransformer(nn.Module):
    def __init__(self, dim: int, heads: int, num_layers: int = 1, num_attention_blocks: int = 2,
                 norm_num_groups: int = 32, max_feat_size: int = 64):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, dim, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [CrossVideoBlock(dim, heads, num_attention_blocks, max_feat_size) for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)


class CrossVideoSyncModule(CrossFrameAttention):
    """CVD's cross-video synchronisation module (``epi_modules.N``), returning its residual update.

    Per frame: GroupNorm (32 groups, as CVD's inflated GroupNorm), ``proj_in``, then blocks of two
    pre-LayerNorm cross-view attentions (frame t of each video attends frame t of its partners along
    the epipolar band, ``ctx.mask("cross", ...)``) and a GEGLU feed-forward, then the zero-initialised
    ``proj_out``. Batch layout: groups of ``ctx.num_views`` videos, ``[a0, b0, a1, b1, ...]``.
    """

    variant = "cross_video"

    def __init__(self, dim: int, heads: int, num_layers: int = 1, num_attention_blocks: int = 2,
                 norm_num_groups: int = 32, max_feat_size: int = 64):
        super().__init__()
        if dim % norm_num_groups:
            raise ValueError(f"dim={dim} is not divisible by norm_num_groups={norm_num_groups}")
        self.dim = dim
        self.epi_transformer = EpiTransformer(dim, heads, num_layers, num_attention_blocks, norm_num_groups,
                                              max_feat_size)

    def forward(self, x: torch.Tensor, ctx: AttentionContext | None, feat_hw: tuple[int, int]) -> torch.Tensor:
        _check_frames(x, feat_hw, self.dim, self.variant)
        if ctx is None:
            raise ValueError("cross_video needs an AttentionContext with cameras and num_views >= 2")
        B, T, hw, C = x.shape
        V = ctx.num_views
        if V < 2 or B % V:
            raise ValueError(f"cross_video needs num_views >= 2 dividing the batch; got num_views={V}, batch={B}")
        rows = torch.arange(B, device=x.device).view(B // V, V)
        partners = [rows.roll(-s, dims=1).flatten() for s in range(1, V)]
        et = self.epi_transformer
        h = et.norm(x.reshape(B * T, hw, C).transpose(1, 2)).transpose(1, 2)
        h = et.proj_in(h)
        for block in et.transformer_blocks:
            h = block(h, ctx, feat_hw, partners, T)
        return et.proj_out(h).view(B, T, hw, C)
