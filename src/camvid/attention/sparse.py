"""Tile plans for the exact block-sparse attention of band masks (epipolar lines, CVD bands).

Queries are grouped into small tiles: ``tile_hw`` cells at the same place in ``tile_frames``
consecutive frames (default 2x4 cells x 4 frames, or 4x8 x 1 when the frame count does not allow
it; ``default_tile``). A tile gathers one key list (for plans from row runs: per key frame and key
row, the hull of its queries' runs; from a mask or neighbour lists: the union of its queries' keys)
and carries its exact (Q, U) sub-mask. Neighbouring cells, and the same cell in neighbouring frames
of a smooth camera path, have neighbouring epipolar lines, so the list stays a few times the band
of one query while the gathered keys are shared by the whole tile. Plans from row runs also weigh
tiles cut from other orders (``build_tile_plan_from_runs``): other one-frame rectangles, each frame's
cells sorted along the pencil of epipolar lines, and, when every query looks into one key frame
(``epipolar_ref``; ``cross_video``, whose samples are single frames looking into their partner's), the queries of all frames sorted by their band's line, so a tile may hold cells of
several frames that see the same band (tiles of 1, 2 or 4 times the default size); the plan keeps the
one of lowest estimated cost (computed pairs, gathered key rows and tiles; ``GATHER_ROW_PAIRS``).

Tiles are sorted by list length and packed into chunks whose gathered keys stay under a fixed number
of elements, so padding is small and memory is bounded. The plan depends only on the cameras and the
feature size: ``AttentionContext`` builds it once per forward and level, every layer and head reuses
it, and ``camvid.attention.blocksparse`` computes it (one gather and one fused attention call per
chunk).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch

from camvid.attention import cpu_kernel
from camvid.attention.blocksparse import block_sparse_attention, block_sparse_attention_packed
from camvid.geometry.epipolar import one_thread

__all__ = ["TilePlan", "build_tile_plan", "build_tile_plan_from_runs", "tiled_sparse_attention",
           "tiled_sparse_attention_packed", "default_tile", "default_tile_hw"]

# Gathered keys per chunk (tiles x union length), before the feature dimension: the most a chunk
# may hold (plans from a mask or neighbour lists use it as their size).
DEFAULT_CHUNK_KEYS = 1 << 16
# Plans from row runs aim lower: chunks of about 2^13 keys (a gathered key and value row is 2 C
# floats: 21 MiB per chunk at C = 320; each of the backward's per-tile key and value gradients
# half that), unless that leaves fewer than 4 tiles in a chunk (then 4 tiles, up to
# DEFAULT_CHUNK_KEYS). The fused kernel allocates these per-tile gradients zero-filled, and its
# outputs, fresh for every chunk: above glibc's 32 MiB mmap ceiling each such tensor maps new pages
# and pays their first-touch faults on every call, below it the freed memory is reused; smaller
# chunks also keep the gathered rows closer in cache for the attention call that reads them. A
# chunk is one parallel region over tiles x heads, so it keeps a few tiles: the wide-band tiles of
# ``epipolar`` (about 1600-2200 keys each at 32x32) go 4 to a chunk. Against 8 tiles of 2^14 keys
# (the previous rule): forward 0.92x, forward+backward 0.87x for ``epipolar`` (``python
# benchmarks/blocksparse_chunks.py --kinds all --threads 2 --chunk-keys 16384 8192 --min-tiles 4``,
# load average 1.8), ``epipolar_ref`` and ``cross_video`` within 3 % (their short tiles fill a
# chunk either way). A floor of 64 tiles had put ``epipolar``'s tiles in 2^16-key chunks whose
# per-tile gradients (84 MiB) paid those faults on every call: 8 tiles took 0.93x its forward and
# 0.79x its forward+backward time. On a host running more threads than cores, every extra parallel
# region can wait a scheduler slice: a run at load average 6 once found 8-tile chunks 1.7x slower
# than 64-tile ones; ``benchmarks/blocksparse_chunks.py`` compares chunk sizes on any host.
RUNS_CHUNK_KEYS = 1 << 13
RUNS_MIN_CHUNK_TILES = 4


@dataclass
class TileChunk:
    """Tiles of one chunk: their queries, the keys they gather, and which (query, slot) pairs are kept.

    The kept pairs are given either as a dense ``(n, Q, U)`` bool sub-mask (plans from a mask or
    neighbour lists) or, for plans from row runs, as per-query slot intervals ``run_lo``/``run_hi``
    (n, Q, G): query ``i`` of tile ``t`` keeps slots ``run_lo[t, i, g] <= j < run_hi[t, i, g]`` for
    each segment-row ``g`` (a run of key columns maps to a run of consecutive slots). The intervals
    are about ``G / U`` of the sub-mask's size and make the kernel's additive bias in three passes.
    """

    query_ids: torch.Tensor  # (n, Q) long into the flat (B * Lq) query axis
    key_ids: torch.Tensor  # (n, U) long into the flat (B * Lk) key axis (padding points at a valid key)
    sub_mask: torch.Tensor | None = None  # (n, Q, U) bool, True = attend (padding False)
    run_lo: torch.Tensor | None = None  # (n, Q, G) slot intervals (empty: lo == hi == 0)
    run_hi: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(tiles n, queries per tile Q, key slots per tile U)."""
        return (*self.query_ids.shape, self.key_ids.shape[1])

    @property
    def mask(self) -> torch.Tensor:
        """(n, Q, U) bool sub-mask, True = attend (made from the intervals when the plan has those)."""
        if self.sub_mask is not None:
            return self.sub_mask
        return _intervals_to_counts(self.run_lo, self.run_hi, 0, self.shape[2], torch.int16) > 0

    def bias(self, num_registers: int, dtype: torch.dtype) -> torch.Tensor:
        """(n, 1, Q, R + U) additive bias: 0 on the R register columns and kept slots, -inf elsewhere."""
        R = num_registers
        if self.sub_mask is None:
            # 1 on kept slots and registers, 0 elsewhere; then 1/x - 1 negated: 0 / -inf, exactly
            # (three cheap in-place passes; log would do it in one but costs several times more)
            counts = _intervals_to_counts(self.run_lo, self.run_hi, R, self.shape[2], dtype)
            return counts.reciprocal_().sub_(1).neg_().unsqueeze(1)
        mask = self.sub_mask
        bias = torch.full((*mask.shape[:2], R + mask.shape[2]), float("-inf"), dtype=dtype, device=mask.device)
        bias[..., :R] = 0.0
        bias[..., R:].masked_fill_(mask, 0.0)
        return bias.unsqueeze(1)


def _intervals_to_counts(lo: torch.Tensor, hi: torch.Tensor, R: int, U: int, dtype) -> torch.Tensor:
    """(n, Q, R + U) tensor: 1 on columns 0..R-1 and on slots R + [lo, hi) of every interval, else 0.

    A difference array (+1 at each start, -1 at each end) and one cumulative sum: the intervals of a
    query are disjoint, so the sum is 0 or 1. Empty intervals (lo == hi) add +1 and -1 at one place.
    """
    n, Q, _ = lo.shape
    diff = torch.zeros(n, Q, R + U, dtype=dtype, device=lo.device)
    lo, hi = lo.long(), hi.long()
    ones = torch.ones((), dtype=dtype, device=lo.device).expand(lo.shape)
    diff.scatter_add_(2, lo + R, ones)
    inside = hi < U  # an interval ending at the last slot needs no -1
    diff.scatter_add_(2, torch.where(inside, hi + R, R), torch.where(inside, -ones, 0 * ones))
    if R:
        diff[..., 0] += 1
        diff[..., R] -= 1
    return diff.cumsum_(2)


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
        return sum(math.prod(c.shape) for c in self.chunks)

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
        chunks.append(TileChunk(tq, kidx + sample * src.lk, sub_mask=sub))
    return TilePlan(batch, src.lq, src.lk, chunks, row_valid)


def _pack_tiles(union: torch.Tensor, chunk_keys: int, max_padding: float = 1.0, min_tiles: int = 1,
                max_keys: int | None = None):
    """Tiles sorted by gathered-key count (largest first), packed greedily into chunks of at most
    ``chunk_keys`` keys whose tiles all have at least ``(1 - max_padding)`` of the chunk's widest
    count (a chunk computes every tile at that width, so this bounds the padding): yields
    (tile indices, slot width = the chunk's largest count). A chunk may exceed ``chunk_keys`` to
    hold ``min_tiles`` tiles, never ``max_keys`` (default ``chunk_keys``) unless it is one tile."""
    max_keys = max(chunk_keys, max_keys or chunk_keys)
    order = torch.argsort(union, descending=True, stable=True)
    neg = [-max(1, u) for u in union[order].tolist()]  # ascending, for bisect
    i = 0
    while i < len(neg):
        width = -neg[i]
        cap = i + max(1, min(max_keys // width, max(min_tiles, chunk_keys // width)))
        floor = width * (1.0 - max_padding)
        j = bisect.bisect_right(neg, -floor, lo=i + 1) if max_padding < 1.0 else len(neg)  # counts >= floor
        j = max(i + 1, min(j, cap))
        yield order[i:j], width
        i = j


# Tiles compared when none is given (``build_tile_plan_from_runs``): the default tile, one-frame
# rectangles of the same size in other shapes (a band's hull is smallest for tiles stretched
# along the band: 1x32 for horizontal CVD bands), and queries sorted by ``order``.
_CANDIDATE_SHAPES = ((4, 8), (8, 4), (2, 16), (16, 2), (1, 32), (32, 1))
# Tiles sampled to estimate a candidate's computed pairs (the choice affects speed only).
_ESTIMATE_TILES = 512
# Padding bound of ``_pack_tiles`` for plans from runs (a chunk's tiles have >= 75 % of its width).
DEFAULT_MAX_PADDING = 0.25


def _sorted_tile_query_ids(order: torch.Tensor, hw: int, q: int) -> torch.Tensor:
    """(N, Lq) sort keys -> (tiles, q) query ids: each frame's cells in key order, cut into runs of q."""
    N, Lq = order.shape
    per_frame = order.reshape(N * (Lq // hw), hw).argsort(dim=1, stable=True)
    first = torch.arange(N * (Lq // hw), device=order.device).unsqueeze(1) * hw
    return (per_frame + first).reshape(-1, q)


# Orientation bins of the band-sorted tilings (one candidate each; the estimate picks among them).
_BAND_ANGLE_BINS = (4, 8, 16)
# Sizes of the band-sorted tilings, in multiples of the default tile's queries: a bigger tile of queries
# that share nearly one band gathers its keys once for more queries, for a wider hull.
_BAND_TILE_SCALES = (1, 2, 4)
GATHER_ROW_PAIRS, TILE_PAIRS = 23, 440
"""The cost model that picks a tiling, in computed (query, key) pairs: a tile of Q queries and U keys
costs Q * U + ``GATHER_ROW_PAIRS`` * U (gathering its keys) + ``TILE_PAIRS`` (its share of a kernel
call), so per query U * (1 + GATHER_ROW_PAIRS / Q) + TILE_PAIRS / Q. Among tiles of one size it orders
the candidates as their computed pairs do. From a least-squares fit of the ``epipolar_ref`` kernel's
forward times with band-sorted tiles of 32, 64, 128 and 256 queries at 32x32, 40x64 and 20x32 (2
threads). Gathered rows and tiles grow together, so each run's fit splits the cost between them
differently (other runs: -2 and 1975, 31 and -555); these constants, from the fit of a first run of the same measurement, rank 128
queries first at all three levels, as the measured times do
(``python benchmarks/blocksparse_chunks.py --band-tiles 32 64 128 256``, docs/performance.md). These are
the costs of PyTorch's fused kernel (``CAMVID_SPARSE_KERNEL=fused``, other dtypes, CUDA)."""
COMPILED_GATHER_ROW_PAIRS, COMPILED_TILE_PAIRS = 0, 0
"""The same for the compiled CPU kernel's forward (``camvid.attention.cpu_kernel``), which reads a
tile's rows in place and has no per-call cost: computed pairs alone. They pick band tiles of 32
queries for ``epipolar_ref``, within 12 % of the fastest size (which varies between 32, 64 and 128) at
32x32, 40x64 and 20x32 in three runs (``python benchmarks/blocksparse_chunks.py --band-tiles 32 64 128 --kernel compiled``,
docs/performance.md). The backward pass stays on the fused kernel, so a plan built while gradients
are recorded (training) keeps the fused kernel's costs: its forward+backward favours the bigger tiles
they pick."""


def tile_costs(device: torch.device, grad: bool = False) -> tuple[float, float]:
    """(gathered-row cost, per-tile cost) in pairs for the kernels that will run a plan on ``device``:
    the compiled forward for float32 on a CPU where it builds and no gradient is recorded (``grad``),
    else the fused kernel's. A plan is chosen before the dtype is known; float32 is what training and
    sampling run in on a CPU."""
    if not grad and cpu_kernel.serves(device, torch.float32):
        return COMPILED_GATHER_ROW_PAIRS, COMPILED_TILE_PAIRS
    return GATHER_ROW_PAIRS, TILE_PAIRS


def _band_lines(lo: torch.Tensor, hi: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N * Lq, h) runs in ONE key frame -> each query's band as a line: (theta, rho), float64.

    The line runs through the centroid of the band's cells along their principal direction: theta
    is the direction's angle in (-pi/2, pi/2] (from the cells' second moments), rho the line's signed
    distance from the frame's centre. Moments are exact sums over each run's columns; a query
    without keys gets an arbitrary line (it widens no tile's hull).
    """
    lo, hi = lo.double(), hi.double()
    n = (hi - lo).clamp_(min=0)
    rows = torch.arange(lo.shape[1], dtype=torch.float64, device=lo.device).expand_as(n)

    def squares_below(a):  # sum of c^2 for c in [0, a)
        return (a - 1) * a * (2 * a - 1) / 6

    col_sum = (lo + hi - 1) * n / 2
    col_sq = torch.where(n > 0, squares_below(hi) - squares_below(lo), torch.zeros_like(n))
    total = n.sum(1).clamp_(min=1)
    cx, cy = col_sum.sum(1) / total, (rows * n).sum(1) / total
    sxx = col_sq.sum(1) / total - cx * cx
    syy = (rows * rows * n).sum(1) / total - cy * cy
    sxy = (rows * col_sum).sum(1) / total - cx * cy
    theta = 0.5 * torch.atan2(2 * sxy, sxx - syy)
    return theta, torch.cos(theta) * (cy - lo.shape[1] / 2) - torch.sin(theta) * (cx - w / 2)


def _band_sort_keys(lines: tuple[torch.Tensor, torch.Tensor], N: int, bins: int) -> torch.Tensor:
    """Queries' band lines (:func:`_band_lines`) -> (N, Lq) sort keys that put queries whose bands
    nearly coincide side by side, whatever their query frame: by theta in ``bins`` bins, by rho
    within a bin (alternating direction from bin to bin, so neighbouring bins meet at one end). 32
    consecutive queries then share nearly one line, hence nearly one band. Unlike the per-frame
    pencil order this groups queries of all frames (every query of ``epipolar_ref`` looks into the
    same reference frame)."""
    theta, rho = lines
    b = ((theta + math.pi / 2) / math.pi * bins).floor_().clamp_(0, bins - 1)
    span = 2 * (rho.abs().max() + 1)
    return (b * span + torch.where(b.remainder(2) == 1, -rho, rho)).reshape(N, -1)


def band_query_order(start: torch.Tensor, end: torch.Tensor, w: int, bins: int = 8) -> torch.Tensor:
    """(N, Lq, 1, h) row runs in ONE key frame -> (N, Lq) query ids, each sample's queries sorted by
    their band's line (:func:`_band_lines`, :func:`_band_sort_keys` with ``bins`` orientation bins):
    consecutive queries, of any frame, look at nearly the same band."""
    N, Lq, S, h = start.shape
    if S != 1:
        raise ValueError(f"band order needs runs in one key frame (S = 1), got S = {S}")
    lines = _band_lines(start.reshape(N * Lq, h), end.reshape(N * Lq, h), w)
    return _band_sort_keys(lines, N, bins).argsort(dim=1, stable=True)


def _sorted_across_frames(order: torch.Tensor, q: int) -> torch.Tensor:
    """(N, Lq) sort keys -> (tiles, q) query ids: each sample's queries in key order, cut into runs of q."""
    N, Lq = order.shape
    return (order.argsort(dim=1, stable=True) + torch.arange(N, device=order.device).unsqueeze(1) * Lq).reshape(-1, q)


def _hulls(lo: torch.Tensor, hi: torch.Tensor, qids: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile and segment-row, the hull [first, first + length) of its queries' runs (empty runs
    do not widen it): (first, length), both (tiles, G) long."""
    tlo_q, thi_q = lo[qids], hi[qids]  # (tiles, Q, G)
    empty = tlo_q >= thi_q
    first = tlo_q.masked_fill_(empty, w).amin(1).long()
    last = thi_q.masked_fill_(empty, 0).amax(1).long()
    return first, (last - first).clamp_(min=0)


def _candidate_tiles(N, frames, feat_hw, order, tile_hw, tile_frames, one_key_frame=None) -> list[torch.Tensor]:
    """Query tilings (tiles, Q) to choose from: only the given tile when ``tile_hw``/``tile_frames`` is set.
    ``one_key_frame``: the (N * Lq, h) runs ``(lo, hi)`` when every query's keys lie in one key frame,
    which adds tilings of queries of all frames sorted by band (:func:`_band_sort_keys`), one per
    ``_BAND_ANGLE_BINS`` and size (``_BAND_TILE_SCALES`` times the default tile's queries, where they
    divide the queries) when there are any."""
    if tile_hw is not None or tile_frames is not None:
        thw, tf = default_tile(feat_hw, frames, tile_hw, tile_frames)
        return [_tile_query_ids(N, frames, feat_hw, thw, tf)]
    thw, tf = default_tile(feat_hw, frames)
    out = [_tile_query_ids(N, frames, feat_hw, thw, tf)]
    q = thw[0] * thw[1] * tf
    h, w = feat_hw
    for shape in _CANDIDATE_SHAPES:
        if shape[0] * shape[1] == q and h % shape[0] == 0 and w % shape[1] == 0 and (shape, 1) != (thw, tf):
            out.append(_tile_query_ids(N, frames, feat_hw, shape, 1))
    if order is not None and (h * w) % q == 0:
        out.append(_sorted_tile_query_ids(order, h * w, q))
    if one_key_frame is not None and (h * w) % q == 0:
        out += _band_tilings(one_key_frame, N, w, [q * k for k in _BAND_TILE_SCALES if (frames * h * w) % (q * k) == 0])
    return out


def _band_tilings(one_key_frame, N: int, w: int, sizes) -> list[torch.Tensor]:
    """Band-sorted tilings (:func:`_band_sort_keys`): one per orientation binning and tile size."""
    lines = _band_lines(*one_key_frame, w)
    keys = [_band_sort_keys(lines, N, bins) for bins in _BAND_ANGLE_BINS]
    return [_sorted_across_frames(key, size) for size in sizes for key in keys]


def build_tile_plan_from_runs(
    start: torch.Tensor,
    end: torch.Tensor,
    feat_hw: tuple[int, int],
    *,
    order: torch.Tensor | None = None,
    tile_hw: tuple[int, int] | None = None,
    tile_frames: int | None = None,
    chunk_keys: int = RUNS_CHUNK_KEYS,
    max_padding: float = DEFAULT_MAX_PADDING,
    min_chunk_tiles: int = RUNS_MIN_CHUNK_TILES,
) -> TilePlan:
    """Plan straight from row runs, never forming a dense mask or neighbour lists.

    ``start`` / ``end`` (N, Lq, S, h): query ``i`` of row ``b`` keeps key cells ``c`` with
    ``start <= c < end`` in feature row ``r`` of key segment ``s``, i.e. key tokens
    ``s*h*w + r*w + c`` (``camvid.geometry.EpipolarRuns``; ``S`` key frames or partner frames).
    A tile gathers, per (segment, row), the hull of its queries' runs ("the key rows its bands
    touch"); the sub-masks are exact: slot ``c`` of a tile is kept for query ``i`` iff ``c`` is in
    ``i``'s run.

    Tiling: ``tile_hw``/``tile_frames`` fix it; otherwise the tiling of lowest cost per query (hull
    keys, gathered rows and tiles, ``GATHER_ROW_PAIRS``; estimated on a sample of tiles; among tiles
    of one size: the fewest hull pairs) among the default tile, other one-frame rectangles of its size
    and, with ``order`` (N, Lq) sort keys (``camvid.geometry.pencil_order``: queries with equal keys
    have equal epipolar lines), each frame's queries in key order cut into tiles of that size; and,
    when every query's keys lie in one key frame (``S == 1``: ``epipolar_ref``, ``cross_video``), the queries of all
    frames sorted by their band's line (:func:`_band_sort_keys`, a few orientation binnings, tiles of
    1, 2 and 4 times the default size), so a tile may hold cells of several frames that look at the
    same band.
    Chunks keep tiles within ``max_padding`` of their widest and hold about ``chunk_keys`` gathered
    keys, or ``min_chunk_tiles`` tiles when that is more, up to ``DEFAULT_CHUNK_KEYS`` (see
    ``RUNS_CHUNK_KEYS`` and ``_pack_tiles``). The whole build
    runs on one thread: it is a few hundred small ops, each a wait for a scheduler slice on a
    busy host when split across threads.
    """
    if start.shape != end.shape or start.dim() != 4:
        raise ValueError(f"runs must be two (N, Lq, S, h) tensors, got {tuple(start.shape)} and {tuple(end.shape)}")
    N, Lq, S, h = start.shape
    if h != feat_hw[0]:
        raise ValueError(f"runs have {h} rows per key frame, feature map is {feat_hw}")
    if order is not None and tuple(order.shape) != (N, Lq):
        raise ValueError(f"order must be (N, Lq) = {(N, Lq)} sort keys, got {tuple(order.shape)}")
    if not 0.0 <= max_padding <= 1.0:
        raise ValueError(f"max_padding must be in [0, 1], got {max_padding}")
    if chunk_keys < 1 or min_chunk_tiles < 1:
        raise ValueError(f"chunk_keys and min_chunk_tiles must be >= 1, got {chunk_keys} and {min_chunk_tiles}")
    packing = {"chunk_keys": chunk_keys, "max_padding": max_padding, "min_tiles": min_chunk_tiles,
               "max_keys": DEFAULT_CHUNK_KEYS}
    with one_thread():
        return _plan_from_runs(start, end, tuple(feat_hw), order, tile_hw, tile_frames, packing)


def _plan_from_runs(start, end, feat_hw, order, tile_hw, tile_frames, packing) -> TilePlan:
    N, Lq, S, h = start.shape
    w = feat_hw[1]
    hw = h * w
    G = S * h
    if Lq % hw:
        raise ValueError(f"{Lq} queries are not whole frames of {feat_hw} cells")
    device = start.device
    small = torch.int16  # columns fit (w <= 32767); small integers keep the passes below cheap
    lo = start.reshape(N * Lq, G).to(small)
    hi = end.reshape(N * Lq, G).to(small)
    # one key frame for every query (epipolar_ref, cross_video): tiles may also gather queries of all frames
    candidates = _candidate_tiles(N, Lq // hw, feat_hw, order, tile_hw, tile_frames, (lo, hi) if S == 1 else None)
    if len(candidates) > 1:
        gather, per_tile = tile_costs(device, torch.is_grad_enabled())

        def estimate(qids):  # cost per query, in pairs (GATHER_ROW_PAIRS, TILE_PAIRS)
            sample = qids[:: max(1, len(qids) // _ESTIMATE_TILES)]
            keys = int(_hulls(lo, hi, sample, w)[1].sum()) / len(sample)
            return keys * (1 + gather / qids.shape[1]) + per_tile / qids.shape[1]
        candidates = [min(candidates, key=estimate)]
    qids = candidates[0].to(device)  # (tiles, Q) into N*Lq
    first, length = _hulls(lo, hi, qids, w)  # (tiles, G)
    union = length.sum(-1)
    packed = list(_pack_tiles(union, **packing))
    # Tiles in chunk order, so that each chunk below is a slice (a view) of these tensors.
    perm = torch.cat([sel for sel, _ in packed])
    qids, first, length = qids[perm], first[perm], length[perm]
    row_valid = (hi > lo).any(-1)
    # Slot intervals of every query of every tile: segment-row g of a tile occupies slots
    # [offset_g, offset_g + length_g), column c at slot offset_g + c - first_g.
    ends = length.cumsum(-1)  # (tiles, G)
    offset = ends - length
    idt = small if int(union.max()) < torch.iinfo(small).max else torch.int32
    shift = (offset - first).to(idt).unsqueeze(1)
    q_lo, q_hi = lo[qids].to(idt), hi[qids].to(idt)  # (tiles, Q, G)
    empty = q_lo >= q_hi
    run_lo = q_lo.add_(shift).masked_fill_(empty, 0)
    run_hi = q_hi.add_(shift).masked_fill_(empty, 0)
    del shift, empty
    seg_first = (torch.arange(G, device=device) * w).view(1, -1)  # token of column 0 of (s, r)
    chunks: list[TileChunk] = []
    i = 0
    for sel, width in packed:
        j = i + len(sel)
        # Slot u of a tile lies in segment-row g(u) (cumulative lengths) at column first[g] + u - offset[g].
        slots = torch.arange(width, device=device).expand(j - i, -1).contiguous()
        g = torch.searchsorted(ends[i:j], slots, right=True).clamp_(max=G - 1)
        col = first[i:j].gather(1, g) + slots - offset[i:j].gather(1, g)
        keys = torch.where(slots < ends[i:j, -1:], seg_first.expand(j - i, -1).gather(1, g) + col, 0)
        tq = qids[i:j]
        sample = tq[:, :1] // Lq
        # padding slots point at key 0 of the tile's own sample (never kept, any valid index works)
        chunks.append(TileChunk(tq, keys + sample * (S * hw), run_lo=run_lo[i:j], run_hi=run_hi[i:j]))
        i = j
    return TilePlan(N, Lq, S * hw, chunks, row_valid)


def _check_plan(plan: TilePlan, B: int, Lq: int, Lk: int) -> None:
    if (B, Lq, Lk) != (plan.batch, plan.num_queries, plan.num_keys):
        raise ValueError(
            f"plan was built for B={plan.batch}, Lq={plan.num_queries}, Lk={plan.num_keys}; "
            f"got B={B}, Lq={Lq}, Lk={Lk}"
        )


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
    _check_plan(plan, q.shape[0], q.shape[1], k.shape[1])
    return block_sparse_attention(q, k, v, plan, reg_k, reg_v)


def tiled_sparse_attention_packed(q: torch.Tensor, kv: torch.Tensor, plan: TilePlan,
                                  num_registers: int = 0) -> torch.Tensor:
    """q (B, Lq, H, D), kv (B, R + Lk, 2, H, D) (per sample the R register tokens, then the keys;
    keys and values side by side, as a fused k/v projection makes them) -> (B, Lq, H, D).

    ``tiled_sparse_attention`` without the packing copy (``camvid.attention.blocksparse.pack_kv``).
    """
    _check_plan(plan, q.shape[0], q.shape[1], kv.shape[1] - num_registers)
    return block_sparse_attention_packed(q, kv, plan, num_registers)
