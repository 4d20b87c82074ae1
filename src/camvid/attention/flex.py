"""FlexAttention path: the band masks as a ``BlockMask`` built from the memoised row runs.

The block mask is made without any dense (L, L) mask: for every block of ``BLOCK`` consecutive
queries, the hull of their row runs says which key blocks hold a kept key; register tokens are
appended after the keys (``Lk .. Lk + R``; their order in the key sequence does not change the
result) in a block every query block visits. Inside the visited blocks the exact mask is
``mask_mod``, which reads the runs themselves: query ``i`` keeps key ``s*h*w + r*w + c`` iff
``start[b, i, s, r] <= c < end[b, i, s, r]``.

On CUDA this is the fast path (``attn.path=auto`` picks it); its work is proportional to the
visited blocks (``FlexBlockMask.sparsity`` is the skipped share). On the CPU, FlexAttention's
forward runs through ``torch.compile`` (slow to compile, used by the tests); its backward does not.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def sparsity(self) -> float:
        """Share of (query block, key block) pairs FlexAttention skips."""
        return 1.0 - self.visited_blocks / max(1, self.total_blocks)


def _pad_to(n: int, block: int) -> int:
    return -(-n // block) * block


def build_flex_block_mask(start: torch.Tensor, end: torch.Tensor, feat_hw: tuple[int, int], num_registers: int,
                          *, block: int = BLOCK) -> FlexBlockMask:
    """``start`` / ``end`` (N, Lq, S, h) row runs (see ``build_tile_plan_from_runs``) -> a block mask
    over queries padded to ``block`` and keys ``[S*h*w keys, registers, padding]``."""
    from torch.nn.attention.flex_attention import BlockMask

    N, Lq, S, h = start.shape
    w = feat_hw[1]
    hw = h * w
    Lk, R = S * hw, num_registers
    Lq_pad, Lk_pad = _pad_to(Lq, block), _pad_to(Lk + R, block)
    nq, nk = Lq_pad // block, Lk_pad // block
    device = start.device
    lo = start.long()
    hi = end.long()
    if Lq_pad != Lq:  # padded queries keep nothing
        lo = torch.nn.functional.pad(lo, (0, 0, 0, 0, 0, Lq_pad - Lq), value=w)
        hi = torch.nn.functional.pad(hi, (0, 0, 0, 0, 0, Lq_pad - Lq), value=0)
    lo_b = lo.view(N, nq, block, S * h)
    hi_b = hi.view(N, nq, block, S * h)
    nonempty = lo_b < hi_b
    tlo = torch.where(nonempty, lo_b, w).amin(2)  # hull per (query block, segment row)
    thi = torch.where(nonempty, hi_b, 0).amax(2)
    used = thi > tlo
    row_first = (torch.arange(S * h, device=device) * w).view(1, 1, -1)
    first_blk = (row_first + tlo) // block
    last_blk = (row_first + thi - 1) // block
    # Mark [first_blk, last_blk] per used run with +1 / -1 and a cumulative sum over key blocks.
    marks = torch.zeros(N, nq, nk + 1, dtype=torch.int32, device=device)
    one = used.to(torch.int32)
    marks.scatter_add_(2, torch.where(used, first_blk, nk), one)
    marks.scatter_add_(2, torch.where(used, last_blk + 1, nk), -one)
    touched = marks.cumsum(-1)[..., :nk] > 0
    if R:
        touched[..., Lk // block:] = True  # the register block(s), seen by every query
        touched[..., (Lk + R - 1) // block + 1:] = False
    counts = touched.sum(-1).to(torch.int32)
    order = torch.argsort((~touched).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    lo_t, hi_t = start, end  # captured by mask_mod (unpadded; indices are clamped)

    def mask_mod(b, hd, q_idx, kv_idx):
        qi = torch.clamp(q_idx, max=Lq - 1)
        is_key = kv_idx < Lk
        kk = torch.clamp(kv_idx, max=Lk - 1)
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
    return FlexBlockMask(bm, Lq, Lk, R, int(counts.sum()), N * nq * nk)


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
    return out[:, :, :Lq].transpose(1, 2)
