"""FlexAttention path: the band masks as a ``BlockMask`` built from the memoised row runs.

The block mask is made without any dense (L, L) mask: for every block of ``BLOCK`` consecutive
queries, the hull of their row runs says which key blocks hold a kept key; register tokens are
appended after the keys (``Lk .. Lk + R``; their order in the key sequence does not change the
result) in a block every query block visits. Inside the visited blocks the exact mask is
``mask_mod``, which reads the runs themselves: query ``i`` keeps key ``s*h*w + r*w + c`` iff
``start[b, i, s, r] <= c < end[b, i, s, r]``.

Queries and keys may be reordered first (``query_order`` / ``key_order``; the context orders the
epipolar kinds so that cells of one band sit side by side): FlexAttention skips a (query block, key
block) pair without a kept pair, and in token order a block of 128 queries is a strip of feature
rows whose epipolar lines fan across every key block. At 32x32 this skips 62-65 % of the blocks
instead of 37-42 %, at 40x64 77-78 % instead of 40-43 % (``python benchmarks/gpu_correctness.py
--sparsity-only``). q, k and v are gathered into that order and the outputs put back.

On CUDA this is the fast path (``attn.path=auto`` picks it); its work is proportional to the
visited blocks (``FlexBlockMask.sparsity`` is the skipped share). On the CPU, FlexAttention's
forward runs through ``torch.compile`` (slow to compile, used by the tests); its backward does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["FlexBlockMask", "build_flex_block_mask", "flex_available", "flex_masked_attention"]

BLOCK = 128
_COMPILED = {}


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class FlexBlockMask:
    block_mask: object  # torch.nn.attention.flex_attention.BlockMask
    num_queries: int
    num_keys: int
    num_registers: int
    visited_blocks: int
    total_blocks: int
    query_order: torch.Tensor | None = None  # (N, Lq): the query at each FlexAttention position
    key_order: torch.Tensor | None = None  # (N, Lk): the key at each FlexAttention key position

    @cached_property
    def query_position(self) -> torch.Tensor | None:
        """(N, Lq): the FlexAttention position of each query (the inverse of ``query_order``)."""
        if self.query_order is None:
            return None
        pos = torch.empty_like(self.query_order)
        return pos.scatter_(1, self.query_order, torch.arange(self.num_queries, device=pos.device).expand_as(pos))

    @property
    def sparsity(self) -> float:
        """Share of (query block, key block) pairs FlexAttention skips."""
        return 1.0 - self.visited_blocks / max(1, self.total_blocks)


def _pad_to(n: int, block: int) -> int:
    return -(-n // block) * block


def build_flex_block_mask(start: torch.Tensor, end: torch.Tensor, feat_hw: tuple[int, int], num_registers: int,
                          *, block: int = BLOCK, query_order: torch.Tensor | None = None,
                          key_order: torch.Tensor | None = None) -> FlexBlockMask:
    """``start`` / ``end`` (N, Lq, S, h) row runs (see ``build_tile_plan_from_runs``) -> a block mask
    over queries padded to ``block`` and keys ``[S*h*w keys, registers, padding]``.

    ``query_order`` (N, Lq) / ``key_order`` (N, S*h*w): permutations; FlexAttention then sees query
    ``query_order[n, p]`` at position ``p`` and key ``key_order[n, p]`` at key position ``p``
    (``flex_masked_attention`` permutes q, k, v and puts the outputs back). Orders that put cells
    of one band side by side leave fewer (query block, key block) pairs holding a kept pair.
    """
    from torch.nn.attention.flex_attention import BlockMask

    N, Lq, S, h = start.shape
    w = feat_hw[1]
    hw = h * w
    Lk, R = S * hw, num_registers
    Lq_pad, Lk_pad = _pad_to(Lq, block), _pad_to(Lk + R, block)
    nq, nk = Lq_pad // block, Lk_pad // block
    device = start.device
    orders = []  # each given order as int64 on the runs' device, once
    for name, order, size in (("query_order", query_order, Lq), ("key_order", key_order, Lk)):
        if order is not None:
            if tuple(order.shape) != (N, size):
                raise ValueError(f"{name} must be (N, {size}) = ({N}, {size}), got {tuple(order.shape)}")
            order = order.to(device=device, dtype=torch.long)
            if not torch.equal(order.sort(dim=1).values, torch.arange(size, device=device).expand(N, -1)):
                raise ValueError(f"{name} must hold a permutation of 0..{size - 1} in every row")
        orders.append(order)
    q_of, k_of = orders
    lo, hi = start.long(), end.long()
    if q_of is not None:
        lo, hi = (t.gather(1, q_of.view(N, Lq, 1, 1).expand_as(t)) for t in (lo, hi))
    if Lq_pad != Lq:  # padded queries keep nothing
        lo = torch.nn.functional.pad(lo, (0, 0, 0, 0, 0, Lq_pad - Lq), value=w)
        hi = torch.nn.functional.pad(hi, (0, 0, 0, 0, 0, Lq_pad - Lq), value=0)
    lo_b = lo.view(N, nq, block, S * h)
    hi_b = hi.view(N, nq, block, S * h)
    nonempty = lo_b < hi_b
    tlo = torch.where(nonempty, lo_b, w).amin(2)  # hull per (query block, segment row)
    thi = torch.where(nonempty, hi_b, 0).amax(2)
    if k_of is None:
        touched = _touched_in_token_order(tlo, thi, S * h, w, block, nk)
    else:
        touched = _touched_in_key_order(tlo, thi, k_of, Lk, w, block, nk)
    if R:
        touched[..., Lk // block:] = True  # the register block(s), seen by every query
        touched[..., (Lk + R - 1) // block + 1:] = False
    counts = touched.sum(-1).to(torch.int32)
    order = torch.argsort((~touched).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    lo_t, hi_t = start, end  # captured by mask_mod (unpadded; indices are clamped)

    def mask_mod(b, hd, q_idx, kv_idx):
        qi = torch.clamp(q_idx, max=Lq - 1)
        if q_of is not None:
            qi = q_of[b, qi]
        is_key = kv_idx < Lk
        kk = torch.clamp(kv_idx, max=Lk - 1)
        if k_of is not None:
            kk = k_of[b, kk]
        seg = kk // hw
        cell = kk - seg * hw
        r = cell // w
        c = cell - r * w
        inside = (c >= lo_t[b, qi, seg, r].to(torch.int64)) & (c < hi_t[b, qi, seg, r].to(torch.int64))
        keep = is_key & inside & (q_idx < Lq)
        if R:
            keep = keep | ((kv_idx >= Lk) & (kv_idx < Lk + R))
        return keep

    bm = BlockMask.from_kv_blocks(counts.unsqueeze(1), order.unsqueeze(1), BLOCK_SIZE=block, mask_mod=mask_mod,
                                  seq_lengths=(Lq_pad, Lk_pad))
    return FlexBlockMask(bm, Lq, Lk, R, int(counts.sum()), N * nq * nk, q_of, k_of)


def _touched_in_token_order(tlo, thi, rows, w, block, nk):
    """Key blocks holding a cell of a query block's row hulls, keys in token order: the hull of
    segment-row g is the token range [g*w + tlo, g*w + thi), marked +1 / -1 and summed over blocks."""
    N, nq = tlo.shape[:2]
    used = thi > tlo
    row_first = (torch.arange(rows, device=tlo.device) * w).view(1, 1, -1)
    first_blk = (row_first + tlo) // block
    last_blk = (row_first + thi - 1) // block
    marks = torch.zeros(N, nq, nk + 1, dtype=torch.int32, device=tlo.device)
    one = used.to(torch.int32)
    marks.scatter_add_(2, torch.where(used, first_blk, nk), one)
    marks.scatter_add_(2, torch.where(used, last_blk + 1, nk), -one)
    return marks.cumsum(-1)[..., :nk] > 0


def _touched_in_key_order(tlo, thi, key_order, Lk, w, block, nk):
    """The same with keys permuted: the hulls' cells, read in ``key_order``, grouped into blocks
    (one sample at a time: a (query blocks, keys) bool map)."""
    N, nq = tlo.shape[:2]
    cols = torch.arange(w, device=tlo.device)
    touched = torch.zeros(N, nq, nk, dtype=torch.bool, device=tlo.device)
    for n in range(N):
        covered = ((cols >= tlo[n, :, :, None]) & (cols < thi[n, :, :, None])).view(nq, Lk)
        covered = covered[:, key_order[n]]
        touched[n] = torch.nn.functional.pad(covered, (0, nk * block - Lk)).view(nq, nk, block).any(-1)
    return touched


def _flex_fn(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    if device_type not in _COMPILED:
        _COMPILED[device_type] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED[device_type]


def flex_masked_attention(q, k, v, fbm: FlexBlockMask, reg_k=None, reg_v=None) -> torch.Tensor:
    """q (N, Lq, H, D), k/v (N, Lk, H, D), reg_k/reg_v (1, H, R, D) or None -> (N, Lq, H, D).

    Equal to ``dense_masked_attention`` on the runs' mask with the registers always visible; a query
    with no key and no register gets 0.
    """
    N, Lq, H, D = q.shape
    Lk = k.shape[1]
    R = 0 if reg_k is None else reg_k.shape[2]
    if (Lq, Lk, R) != (fbm.num_queries, fbm.num_keys, fbm.num_registers):
        raise ValueError(f"flex block mask was built for Lq={fbm.num_queries}, Lk={fbm.num_keys}, "
                         f"R={fbm.num_registers}; got Lq={Lq}, Lk={Lk}, R={R}")
    Lq_pad, Lk_pad = fbm.block_mask.seq_lengths
    if fbm.query_order is not None:
        q = _rows(q, fbm.query_order)
    if fbm.key_order is not None:
        k, v = _rows(k, fbm.key_order), _rows(v, fbm.key_order)
    qh = q.transpose(1, 2)
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)
    if R:
        kh = torch.cat([kh, reg_k.to(kh.dtype).expand(N, -1, -1, -1)], dim=2)
        vh = torch.cat([vh, reg_v.to(vh.dtype).expand(N, -1, -1, -1)], dim=2)
    pad_k = Lk_pad - kh.shape[2]
    if pad_k:
        kh = torch.nn.functional.pad(kh, (0, 0, 0, pad_k))
        vh = torch.nn.functional.pad(vh, (0, 0, 0, pad_k))
    if Lq_pad != Lq:
        qh = torch.nn.functional.pad(qh, (0, 0, 0, Lq_pad - Lq))
    out = _flex_fn(q.device.type)(qh.contiguous(), kh.contiguous(), vh.contiguous(), block_mask=fbm.block_mask)
    out = out[:, :, :Lq].transpose(1, 2)
    return out if fbm.query_order is None else _rows(out, fbm.query_position)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (N, L, H, D), index (N, L) -> x[n, index[n]] for every n."""
    return x.gather(1, index.to(x.device).view(*index.shape, 1, 1).expand_as(x))
