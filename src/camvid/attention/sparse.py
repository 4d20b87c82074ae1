"""Tile plans for the exact block-sparse attention of band masks (epipolar lines, CVD bands).

Queries are grouped into small tiles: ``tile_hw`` cells at the same place in ``tile_frames``
consecutive frames (default 2x4 cells x 4 frames, or 4x8 x 1 when the frame count does not allow
it; ``default_tile``). A tile gathers one key list (for plans from row runs: per key frame and key
row, the hull of its queries' runs; from a mask or neighbour lists: the union of its queries' keys)
and carries its exact (Q, U) sub-mask. Neighbouring cells, and the same cell in neighbouring frames
of a smooth camera path, have neighbouring epipolar lines, so the list stays a few times the band
of one query while the gathered keys are shared by the whole tile.

Tiles are sorted by list length and packed into chunks whose gathered keys stay under a fixed number
of elements, so padding is small and memory is bounded. The plan depends only on the cameras and the
feature size: ``AttentionContext`` builds it once per forward and level, every layer and head reuses
it, and ``camvid.attention.blocksparse`` computes it (one gather and one fused attention call per
chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camvid.attention.blocksparse import block_sparse_attention

__all__ = ["TilePlan", "build_tile_plan", "build_tile_plan_from_runs", "tiled_sparse_attention", "default_tile",
           "default_tile_hw"]

# Gathered keys per chunk (tiles x union length), before the feature dimension.
DEFAULT_CHUNK_KEYS = 1 << 16


@dataclass
class TileChunk:
    query_ids: torch.Tensor  # (n, Q) long into the flat (B * Lq) query axis
    key_ids: torch.Tensor  # (n, U) long into the flat (B * Lk) key axis (padding points at a valid key)
    mask: torch.Tensor  # (n, Q, U) bool, True = attend (padding False)


@dataclass
class TilePlan:
    """Everything the sparse kernel needs about one mask; built once per cameras and feature size."""

    batch: int
    num_queries: int  # Lq per sample
    num_keys: int  # Lk per sample
    chunks: list[TileChunk]
    row_valid: torch.Tensor  # (B * Lq,) bool: the query has at least one key in the mask

    @property
    def gathered_keys(self) -> int:
        return sum(c.key_ids.numel() for c in self.chunks)

    @property
    def computed_pairs(self) -> int:
        """(query, key) pairs the kernel computes scores for (registers excluded)."""
        return sum(c.mask.numel() for c in self.chunks)

    @property
    def computed_fraction(self) -> float:
        """``computed_pairs`` over all (query, key) pairs: the kernel's share of dense attention work."""
        return self.computed_pairs / max(1, self.batch * self.num_queries * self.num_keys)


def default_tile_hw(feat_hw: tuple[int, int], target: tuple[int, int] = (4, 8)) -> tuple[int, int]:
    """Largest tile not above ``target`` whose sides divide the feature map."""
    return tuple(max(d for d in range(1, t + 1) if n % d == 0) for n, t in zip(feat_hw, target))


# Query frames per tile -> default spatial tile: about 32 queries per tile either way. Neighbouring
# frames of a clip see a key frame from nearly the same pose, so a query's epipolar line there moves
# little from frame to frame; a 2x4 x 4-frame tile touches about a third fewer keys than a 4x8 x 1
# (measured on 16-frame RealEstate10K-like clips at 32x32 and 40x64).
_SPATIAL_FOR_FRAMES = {4: (2, 4), 2: (2, 8), 1: (4, 8)}


def default_tile(feat_hw: tuple[int, int], frames: int, tile_hw: tuple[int, int] | None = None,
                 tile_frames: int | None = None) -> tuple[tuple[int, int], int]:
    """(tile_hw, tile_frames) for ``frames`` query frames per sample; given values are kept (a given
    ``tile_hw`` alone keeps one frame per tile)."""
    if tile_frames is None:
        tile_frames = 1 if tile_hw is not None else max(t for t in _SPATIAL_FOR_FRAMES if frames % t == 0)
    if tile_hw is None:
        tile_hw = default_tile_hw(feat_hw, _SPATIAL_FOR_FRAMES.get(tile_frames, (2, 4)))
    return tuple(tile_hw), int(tile_frames)


def _tile_query_ids(batch: int, frames: int, feat_hw: tuple[int, int], tile_hw: tuple[int, int],
                    tile_frames: int = 1) -> torch.Tensor:
    h, w = feat_hw
    ph, pw = tile_hw
    if h % ph or w % pw:
        raise ValueError(f"tile {tile_hw} does not divide the feature map {feat_hw}")
    if tile_frames < 1 or frames % tile_frames:
        raise ValueError(f"tile_frames={tile_frames} does not divide the {frames} query frames per sample")
    tf = tile_frames
    ids = torch.arange(batch * frames * h * w).view(batch, frames // tf, tf, h // ph, ph, w // pw, pw)
    return ids.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, tf * ph * pw)  # (B * tiles, Q)


def _union_index(tile_any: torch.Tensor, width: int) -> torch.Tensor:
    """(n, Lk) bool -> (n, width) column indices of the True entries, in order, padded with the first one."""
    counts = tile_any.sum(dim=-1)
    rows, cols = tile_any.nonzero(as_tuple=True)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - start[rows]
    out = torch.zeros(tile_any.shape[0], width, dtype=torch.long, device=tile_any.device)
    out[rows, slot] = cols
    first = out[:, :1]
    pad = torch.arange(width, device=out.device) >= counts[:, None]
    return torch.where(pad, first.expand_as(out), out)


class _DenseRows:
    def __init__(self, mask: torch.Tensor):
        self.flat = mask.reshape(-1, mask.shape[-1])  # (B * Lq, Lk)
        self.lk = mask.shape[-1]
        self.lq = mask.shape[1]

    def rows(self, qids: torch.Tensor) -> torch.Tensor:  # (n, Q) -> (n, Q, Lk) bool, per-sample key index
        return self.flat[qids]


class _NeighborRows:
    def __init__(self, index: torch.Tensor, valid: torch.Tensor, num_keys: int):
        self.index = index.reshape(-1, index.shape[-1])
        self.valid = valid.reshape(-1, valid.shape[-1])
        self.lk = num_keys
        self.lq = index.shape[1]

    def rows(self, qids: torch.Tensor) -> torch.Tensor:
        n, q = qids.shape
        idx = torch.where(self.valid[qids], self.index[qids], self.lk)  # invalid -> dummy column
        out = torch.zeros(n, q, self.lk + 1, dtype=torch.bool, device=idx.device)
        out.scatter_(2, idx, True)
        return out[..., : self.lk]


def build_tile_plan(
    feat_hw: tuple[int, int],
    *,
    mask: torch.Tensor | None = None,
    neighbors: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_keys: int | None = None,
    tile_hw: tuple[int, int] | None = None,
    tile_frames: int | None = None,
    chunk_keys: int = DEFAULT_CHUNK_KEYS,
) -> TilePlan:
    """Plan from a dense (B, Lq, Lk) bool mask or from neighbour lists (index, valid) of (B, Lq, Kmax).

    Queries are frames of ``feat_hw`` cells laid out (frame, row, column); Lq must be a multiple of h*w.
    ``num_keys`` (Lk) is required with ``neighbors``.
    """
    if (mask is None) == (neighbors is None):
        raise ValueError("build_tile_plan needs exactly one of mask= or neighbors=")
    if mask is not None:
        if mask.dtype != torch.bool or mask.dim() != 3:
            raise ValueError(f"mask must be a (B, Lq, Lk) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
        src = _DenseRows(mask)
        batch = mask.shape[0]
    else:
        if num_keys is None:
            raise ValueError("build_tile_plan(neighbors=...) needs num_keys (the key sequence length)")
        src = _NeighborRows(neighbors[0], neighbors[1], num_keys)
        batch = neighbors[0].shape[0]
    hw = feat_hw[0] * feat_hw[1]
    if src.lq % hw:
        raise ValueError(f"{src.lq} queries are not whole frames of {feat_hw} cells")
    tile_hw, tile_frames = default_tile(feat_hw, src.lq // hw, tile_hw, tile_frames)
    device = (mask if mask is not None else neighbors[0]).device
    qids = _tile_query_ids(batch, src.lq // hw, feat_hw, tile_hw, tile_frames).to(device)
    # Pass 1: union size per tile (bounded memory: a few hundred tiles at a time).
    step = max(1, (1 << 24) // max(1, qids.shape[1] * src.lk))
    union = torch.cat([src.rows(qids[i:i + step]).any(dim=1).sum(dim=-1) for i in range(0, len(qids), step)])
    row_valid = (mask if mask is not None else neighbors[1]).any(dim=-1).flatten()
    # Pass 2: tiles sorted by union size, packed into chunks of about ``chunk_keys`` gathered keys.
    chunks: list[TileChunk] = []
    for sel, width in _pack_tiles(union, chunk_keys):
        tq = qids[sel]
        rows = src.rows(tq)  # (n, Q, Lk)
        tile_any = rows.any(dim=1)
        kidx = _union_index(tile_any, width)  # (n, U)
        sub = torch.gather(rows, 2, kidx[:, None, :].expand(-1, rows.shape[1], -1))
        sub &= torch.arange(width, device=sub.device) < tile_any.sum(-1)[:, None, None]
        sample = tq[:, :1] // src.lq  # which batch sample each tile belongs to
        chunks.append(TileChunk(tq, kidx + sample * src.lk, sub))
    return TilePlan(batch, src.lq, src.lk, chunks, row_valid)


def _pack_tiles(union: torch.Tensor, chunk_keys: int):
    """Tiles sorted by gathered-key count (largest first), packed greedily into chunks of about
    ``chunk_keys`` keys: yields (tile indices, slot width = the chunk's largest count)."""
    order = torch.argsort(union, descending=True)
    union_sorted = union[order].tolist()
    i = 0
    while i < len(order):
        width = max(1, union_sorted[i])
        n = max(1, chunk_keys // width)
        yield order[i:i + n], width
        i += n


def build_tile_plan_from_runs(
    start: torch.Tensor,
    end: torch.Tensor,
    feat_hw: tuple[int, int],
    *,
    tile_hw: tuple[int, int] | None = None,
    tile_frames: int | None = None,
    chunk_keys: int = DEFAULT_CHUNK_KEYS,
) -> TilePlan:
    """Plan straight from row runs, never forming a dense mask or neighbour lists.

    ``start`` / ``end`` (N, Lq, S, h): query ``i`` of row ``b`` keeps key cells ``c`` with
    ``start <= c < end`` in feature row ``r`` of key segment ``s``, i.e. key tokens
    ``s*h*w + r*w + c`` (``camvid.geometry.EpipolarRuns``; ``S`` key frames or partner frames).
    A tile gathers, per (segment, row), the hull of its queries' runs ("the key rows its bands
    touch"); neighbouring queries have overlapping runs, so the hull is about their union. The
    sub-masks are exact: slot ``c`` of a tile is True for query ``i`` iff ``c`` is in ``i``'s run.
    """
    if start.shape != end.shape or start.dim() != 4:
        raise ValueError(f"runs must be two (N, Lq, S, h) tensors, got {tuple(start.shape)} and {tuple(end.shape)}")
    N, Lq, S, h = start.shape
    if h != feat_hw[0]:
        raise ValueError(f"runs have {h} rows per key frame, feature map is {feat_hw}")
    w = feat_hw[1]
    hw = h * w
    if Lq % hw:
        raise ValueError(f"{Lq} queries are not whole frames of {feat_hw} cells")
    device = start.device
    tile_hw, tile_frames = default_tile(feat_hw, Lq // hw, tile_hw, tile_frames)
    qids = _tile_query_ids(N, Lq // hw, feat_hw, tile_hw, tile_frames).to(device)  # (tiles, Q) into N*Lq
    small = torch.int16  # columns fit (w <= 32767); small integers keep the passes below cheap
    lo = start.reshape(N * Lq, S * h).to(small)
    hi = end.reshape(N * Lq, S * h).to(small)
    # Hull per (tile, segment, row); empty runs must not widen it.
    tlo_q, thi_q = lo[qids], hi[qids]  # (tiles, Q, S*h)
    empty = tlo_q >= thi_q
    tlo = tlo_q.masked_fill(empty, w).amin(1).long()  # (tiles, S*h)
    thi = thi_q.masked_fill_(empty, 0).amax(1).long()
    del tlo_q, thi_q, empty
    length = (thi - tlo).clamp_(min=0)
    union = length.sum(-1)
    row_valid = (hi > lo).any(-1)
    seg_first = (torch.arange(S * h, device=device) * w).view(1, -1)  # token of column 0 of (s, r)
    chunks: list[TileChunk] = []
    for sel, width in _pack_tiles(union, chunk_keys):
        ln, first_col = length[sel], tlo[sel]
        # Slot j of a tile lies in segment-row g(j) (cumulative lengths) at column first_col[g] + offset.
        ends = ln.cumsum(-1)
        slots = torch.arange(width, device=device).expand(len(sel), -1)
        g = torch.searchsorted(ends, slots.contiguous(), right=True).clamp_(max=S * h - 1)
        used = slots < ends[:, -1:]
        col = first_col.gather(1, g) + slots - (ends - ln).gather(1, g)
        keys = torch.where(used, seg_first.expand(len(sel), -1).gather(1, g) + col, 0)
        tq = qids[sel]
        gq = g.unsqueeze(1).expand(-1, tq.shape[1], -1)
        c = col.masked_fill_(~used, -1).to(small).unsqueeze(1)  # padding slots: column -1, never kept
        sub = lo[tq].gather(2, gq) <= c
        sub &= hi[tq].gather(2, gq) > c
        sample = tq[:, :1] // Lq
        # padding slots point at key 0 of the tile's own sample (masked out, any valid index works)
        chunks.append(TileChunk(tq, keys + sample * (S * hw), sub))
    return TilePlan(N, Lq, S * hw, chunks, row_valid)


def tiled_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: TilePlan,
    reg_k: torch.Tensor | None = None,
    reg_v: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (B, Lq, H, D), k/v (B, Lk, H, D), reg_k/reg_v (1, H, R, D) or None -> (B, Lq, H, D).

    Equal to ``dense_masked_attention`` on the mask the plan was built from (block-sparse kernel of
    ``camvid.attention.blocksparse``, with its own recomputing backward pass).
    """
    B, Lq = q.shape[:2]
    if (B, Lq, k.shape[1]) != (plan.batch, plan.num_queries, plan.num_keys):
        raise ValueError(
            f"plan was built for B={plan.batch}, Lq={plan.num_queries}, Lk={plan.num_keys}; "
            f"got B={B}, Lq={Lq}, Lk={k.shape[1]}"
        )
    return block_sparse_attention(q, k, v, plan, reg_k, reg_v)
