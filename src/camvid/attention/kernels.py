"""Masked multi-head attention kernels shared by every cross-frame attention variant.

Two exact paths compute the same function:

- ``dense_masked_attention``: one ``scaled_dot_product_attention`` call with a boolean mask of shape
  ``(B, 1, Lq, Lk)``. The head axis is a broadcast, so the mask is never copied per head.
- ``sparse_neighbor_attention``: for each query, gather only the keys inside its band (an index list
  with a validity flag, see ``mask_to_neighbors``), plus the register tokens, and run a softmax over
  that short list. Work and memory scale with the band, not with ``Lk``; queries are processed in
  chunks so the gathered keys/values never exceed ``max_chunk_elements`` numbers per tensor.

Rows whose mask is empty: with register tokens the row still has keys (the registers), so it stays
defined. Without registers such a row would be a softmax over nothing (NaN); both kernels instead
return exactly 0 for it and pass zero gradient through it (``row_valid``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "dense_masked_attention",
    "sparse_neighbor_attention",
    "mask_to_neighbors",
    "pad_mask_for_registers",
    "DEFAULT_MAX_CHUNK_ELEMENTS",
]

# Budget for one gathered key (or value) chunk in the sparse kernel: 2**24 numbers = 64 MiB in fp32.
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 24


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


def _sparse_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    reg_k: torch.Tensor | None,
    reg_v: torch.Tensor | None,
) -> torch.Tensor:
    """One chunk of queries. q (B, c, H, D); k/v (B, Lk, H, D); index/valid (B, c, K); reg_* (B|1, R, H, D)."""
    B, c, H, D = q.shape
    K = index.shape[-1]
    batch = torch.arange(B, device=q.device)[:, None, None]
    kg = k[batch, index]  # (B, c, K, H, D)
    vg = v[batch, index]
    scale = D**-0.5
    scores = torch.einsum("bchd,bckhd->bchk", q, kg) * scale  # (B, c, H, K)
    # The finite minimum (not -inf) keeps rows with no valid key finite; exp(min - max) is exactly 0.
    scores = scores.masked_fill(~valid[:, :, None, :], torch.finfo(scores.dtype).min)
    if reg_k is not None and reg_k.shape[1] > 0:
        reg_scores = torch.einsum("bchd,brhd->bchr", q, reg_k.expand(B, -1, -1, -1)) * scale
        probs = torch.softmax(torch.cat([reg_scores, scores], dim=-1), dim=-1)
        R = reg_k.shape[1]
        out = torch.einsum("bchr,brhd->bchd", probs[..., :R], reg_v.expand(B, -1, -1, -1))
        out = out + torch.einsum("bchk,bckhd->bchd", probs[..., R:], vg)
        return out
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bchk,bckhd->bchd", probs, vg)
    row_valid = valid.any(dim=-1)  # (B, c)
    return out * row_valid[:, :, None, None].to(out.dtype)


def sparse_neighbor_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    reg_k: torch.Tensor | None = None,
    reg_v: torch.Tensor | None = None,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Attention over per-query key lists, exactly equal to the dense path on the same mask.

    q (B, Lq, H, D); k/v (B, Lk, H, D); index (B, Lq, K) long into [0, Lk); valid (B, Lq, K) bool;
    reg_k/reg_v (B or 1, R, H, D) register keys/values every query sees. Returns (B, Lq, H, D).
    Under autograd each chunk is recomputed in the backward pass (activation checkpointing), so the
    gathered keys are never stored for all queries at once.
    """
    B, Lq, H, D = q.shape
    if index.shape[:2] != (B, Lq) or valid.shape != index.shape:
        raise ValueError(
            f"neighbour index {tuple(index.shape)} / valid {tuple(valid.shape)} do not match queries (B={B}, Lq={Lq})"
        )
    K = max(int(index.shape[-1]), 1)
    if index.shape[-1] == 0:  # no key anywhere: one invalid slot keeps shapes non-empty
        index = index.new_zeros(B, Lq, 1)
        valid = valid.new_zeros(B, Lq, 1)
    chunk = max(1, min(Lq, max_chunk_elements // (B * K * H * D)))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, reg_k, reg_v)
    )
    outs = []
    for start in range(0, Lq, chunk):
        sl = slice(start, start + chunk)
        args = (q[:, sl], k, v, index[:, sl], valid[:, sl], reg_k, reg_v)
        if needs_grad:
            outs.append(checkpoint(_sparse_chunk, *args, use_reentrant=False))
        else:
            outs.append(_sparse_chunk(*args))
    return torch.cat(outs, dim=1)


def mask_to_neighbors(
    mask: torch.Tensor, max_keys: int | None = None, row_chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a (B, Lq, Lk) bool mask into (index (B, Lq, Kmax) long, valid (B, Lq, Kmax) bool).

    Kmax is the largest row count (or ``max_keys``, which must not drop any True entry). The rows are
    processed in chunks so the int64 sort buffer stays ``row_chunk * Lk`` elements.
    """
    if mask.dtype != torch.bool or mask.dim() != 3:
        raise ValueError(f"mask must be a (B, Lq, Lk) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    B, Lq, Lk = mask.shape
    counts = mask.sum(dim=-1)
    kmax = int(counts.max()) if counts.numel() else 0
    if max_keys is not None:
        if max_keys < kmax:
            raise ValueError(f"max_keys={max_keys} would drop keys: a mask row holds {kmax} True entries")
        kmax = max_keys
    index = torch.zeros(B, Lq, kmax, dtype=torch.long, device=mask.device)
    for start in range(0, Lq, row_chunk):
        rows = mask[:, start:start + row_chunk]
        # A stable descending sort of 0/1 puts the True columns first, in increasing column order.
        order = torch.sort(rows.to(torch.uint8), dim=-1, descending=True, stable=True).indices
        keep = min(kmax, Lk)
        index[:, start:start + row_chunk, :keep] = order[..., :keep]
    valid = torch.arange(kmax, device=mask.device) < counts[..., None]
    index = torch.where(valid, index, torch.zeros_like(index))
    return index, valid
