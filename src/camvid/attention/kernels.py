"""Masked multi-head attention kernels shared by every cross-frame attention variant.

Two exact paths compute the same function:

- ``dense_masked_attention``: one ``scaled_dot_product_attention`` call with a boolean mask of shape
  ``(B, 1, Lq, Lk)``. The head axis is a broadcast, so the mask is never copied per head.
- ``camvid.attention.sparse.tiled_sparse_attention``: the block-sparse kernel
  (``camvid.attention.blocksparse``): tiles of queries x the keys their bands touch, plus the
  register tokens; ``camvid.attention.flex`` is the FlexAttention form of the same masks (CUDA).

Rows whose mask is empty: with register tokens the row still has keys (the registers), so it stays
defined. Without registers such a row would be a softmax over nothing (NaN); both kernels instead
return exactly 0 for it and pass zero gradient through it (``row_valid``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "chunked_masked_attention",
    "dense_masked_attention",
    "mask_to_neighbors",
    "pad_mask_for_registers",
]

# Bool mask elements per query chunk of ``chunked_masked_attention`` (16 MiB).
CHUNK_MASK_ELEMENTS = 1 << 24

def pad_mask_for_registers(mask: torch.Tensor, num_registers: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prepare a (B, Lq, Lk) bool mask for ``dense_masked_attention``.

    Returns ``(mask, row_valid)``: ``num_registers`` always-visible columns are prepended (register
    tokens come first in the key sequence, as in CamI2V). Without registers, rows with no visible key
    are opened to every key so the softmax is defined, and ``row_valid`` (B, Lq) marks the rows whose
    output must be zeroed; ``row_valid`` is None when every row has a key.
    """
    if mask.dtype != torch.bool or mask.dim() != 3:
        raise ValueError(f"mask must be a (B, Lq, Lk) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    if num_registers > 0:
        return F.pad(mask, (num_registers, 0), value=True), None
    row_valid = mask.any(dim=-1)
    if bool(row_valid.all()):
        return mask, None
    return mask | ~row_valid[..., None], row_valid


def dense_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    row_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention, q (B, H, Lq, D), k/v (B, H, Lk, D), mask (B, Lq, Lk) bool (True = attend).

    ``mask`` must already include register columns and have no empty row (``pad_mask_for_registers``);
    ``row_valid`` (B, Lq) zeroes the rows that had no key at all.
    """
    attn_mask = None if mask is None else mask.unsqueeze(1)  # (B, 1, Lq, Lk): a view, shared by heads
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if row_valid is not None:
        out = out * row_valid[:, None, :, None].to(out.dtype)
    return out


def chunked_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: Callable[[int, int], torch.Tensor],
    num_registers: int,
    chunk_elements: int | None = None,
) -> torch.Tensor:
    """``dense_masked_attention`` over query chunks whose mask rows come from ``rows(q0, q1)``.

    q (B, H, Lq, D); k/v (B, H, R + Lk, D) with the ``num_registers`` register tokens first;
    ``rows(q0, q1)`` returns the (B, q1 - q0, Lk) bool rows of queries ``q0:q1`` (no register
    columns). Each chunk gets the register columns (or, without registers, its empty rows opened
    and zeroed) exactly as ``pad_mask_for_registers`` does for the whole mask, so the result is the
    same function while only one chunk of the (B, Lq, R + Lk) mask exists at a time (about
    ``chunk_elements`` elements, default ``CHUNK_MASK_ELEMENTS``).
    """
    B, _, Lq, _ = q.shape
    n = max(1, (chunk_elements or CHUNK_MASK_ELEMENTS) // max(1, B * k.shape[2]))
    if n >= Lq:
        return dense_masked_attention(q, k, v, *pad_mask_for_registers(rows(0, Lq), num_registers))
    outs = []
    for q0 in range(0, Lq, n):
        q1 = min(Lq, q0 + n)
        mask, row_valid = pad_mask_for_registers(rows(q0, q1), num_registers)
        outs.append(dense_masked_attention(q[:, :, q0:q1], k, v, mask, row_valid))
    return torch.cat(outs, dim=2)


def mask_to_neighbors(mask: torch.Tensor, max_keys: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a (B, Lq, Lk) bool mask into (index (B, Lq, Kmax) long, valid (B, Lq, Kmax) bool).

    Column indices of each row's True entries, in increasing order; padding slots hold index 0 and
    valid False. Kmax is the largest row count, or ``max_keys`` (which must not drop any True entry).
    """
    if mask.dtype != torch.bool or mask.dim() != 3:
        raise ValueError(f"mask must be a (B, Lq, Lk) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    B, Lq, _ = mask.shape
    counts = mask.sum(dim=-1)
    kmax = int(counts.max()) if counts.numel() else 0
    if max_keys is not None:
        if max_keys < kmax:
            raise ValueError(f"max_keys={max_keys} would drop keys: a mask row holds {kmax} True entries")
        kmax = max_keys
    b, r, cols = mask.nonzero(as_tuple=True)  # row-major order: columns ascend within a row
    flat_row = b * Lq + r
    start = (torch.cumsum(counts.flatten(), 0) - counts.flatten())[flat_row]
    slot = torch.arange(cols.numel(), device=mask.device) - start
    index = torch.zeros(B, Lq, kmax, dtype=torch.long, device=mask.device)
    index[b, r, slot] = cols
    valid = torch.arange(kmax, device=mask.device) < counts[..., None]
    return index, valid
