"""Exact block-sparse attention over a :class:`~camvid.attention.sparse.TilePlan`, forward and backward.

A plan lists, per query tile (a few cells of one frame), the keys its bands touch and the tile's
(Q, U) sub-mask. Tiles with similar key counts are packed into chunks; one chunk of n tiles is a
single call of PyTorch's fused CPU attention kernel (``_scaled_dot_product_flash_attention_for_cpu``)
on the gathered blocks, batch n x heads, queries Q, keys R + U (the register tokens are rows 0..R-1
of an extended key tensor and open to every query), with the sub-mask as an additive bias. So the
Python loop runs over chunks (tens to hundreds per level), never over queries or tiles.

The backward pass re-gathers each chunk and calls the fused kernel's backward with the forward's
saved output and log-sum-exp (recomputation, as FlashAttention): memory stays at one chunk, and
the gathered keys' gradients are scattered back with one ``index_add_`` per chunk.

A query with no key and no register is a fully masked row: the fused kernel returns 0 for it and
passes no gradient through it, the convention of every path here.
"""

from __future__ import annotations

import math

import torch

__all__ = ["block_sparse_attention"]

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _Workspace:
    """Buffers reused by every chunk of one call.

    Fresh multi-megabyte tensors on the CPU come from ``mmap`` and are paid for again in page
    faults on first touch, which made a gather 6x slower than the same gather into a reused buffer
    (measured on the 2-core development host); the gathers therefore write into these buffers.
    """

    def __init__(self, like: torch.Tensor):
        self.like = like
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, *shape: int, dtype=None) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < numel or (dtype is not None and buf.dtype != dtype):
            buf = self.like.new_empty(numel, dtype=dtype)
            self.bufs[name] = buf
        return buf[:numel].view(shape)


def _gather(ws, name, src, idx, n):
    """Rows ``idx`` (n*X,) of ``src`` (tokens, H, D) -> (n, H, X, D), a strided view of a reused buffer."""
    _, H, D = src.shape
    out = ws.get(name, idx.numel(), H * D)
    torch.index_select(src.view(src.shape[0], H * D), 0, idx, out=out)
    return out.view(n, -1, H, D).transpose(1, 2)


def _chunk_inputs(chunk, R: int, dtype):
    """Key ids into the register-extended key tensor and the (n, 1, Q, R + U) additive bias.

    Both depend only on the plan, the register count and the dtype, so they are made on first use
    and kept on the chunk: every layer and head of the level, forward and backward, reuses them.
    """
    cache = chunk.__dict__.setdefault("_ext", {})
    key = (R, dtype)
    if key not in cache:
        n = chunk.key_ids.shape[0]
        regs = torch.arange(R, device=chunk.key_ids.device).expand(n, R)
        kids = torch.cat([regs, chunk.key_ids + R], dim=1).reshape(-1)
        blocked = chunk.blocked
        if R:
            blocked = torch.nn.functional.pad(blocked, (R, 0), value=False)
        bias = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill_(blocked, float("-inf"))
        cache.clear()  # one register count and dtype per level in practice: keep memory bounded
        cache[key] = (kids, bias.unsqueeze(1))
    return cache[key]


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k_ext, v_ext, R, plan):
        # q (Nq, H, D); k_ext / v_ext (R + Nk, H, D): the R register tokens first, then the keys
        Nq, H, D = q.shape
        out = q.new_zeros(Nq, H, D)
        lse = q.new_zeros(Nq, H)
        ws = _Workspace(q)
        for c in plan.chunks:
            n, Q = c.query_ids.shape
            qflat = c.query_ids.reshape(-1)
            kids, bias = _chunk_inputs(c, R, q.dtype)
            o, l = _flash(_gather(ws, "q", q, qflat, n), _gather(ws, "k", k_ext, kids, n),
                          _gather(ws, "v", v_ext, kids, n), attn_mask=bias)
            out.index_copy_(0, qflat, o.transpose(1, 2).reshape(n * Q, H, D))
            lse.index_copy_(0, qflat, l.transpose(1, 2).reshape(n * Q, H))
        ctx.plan, ctx.R = plan, R
        ctx.save_for_backward(q, k_ext, v_ext, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k_ext, v_ext, out, lse = ctx.saved_tensors
        plan, R = ctx.plan, ctx.R
        Nq, H, D = q.shape
        dout = dout.contiguous()
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k_ext)
        dv = torch.zeros_like(v_ext)
        ws = _Workspace(q)
        for c in plan.chunks:
            n, Q = c.query_ids.shape
            qflat = c.query_ids.reshape(-1)
            kids, bias = _chunk_inputs(c, R, q.dtype)
            qg = _gather(ws, "q", q, qflat, n)
            kg = _gather(ws, "k", k_ext, kids, n)
            vg = _gather(ws, "v", v_ext, kids, n)
            og = _gather(ws, "o", out, qflat, n)
            dog = _gather(ws, "do", dout, qflat, n)
            lg = lse.index_select(0, qflat).view(n, Q, H).transpose(1, 2).contiguous()
            gq, gk, gv = _flash_backward(dog, qg, kg, vg, og, lg, 0.0, False, attn_mask=bias)
            dq.index_copy_(0, qflat, gq.transpose(1, 2).reshape(n * Q, H, D))
            dk.index_add_(0, kids, gk.transpose(1, 2).reshape(-1, H, D))
            dv.index_add_(0, kids, gv.transpose(1, 2).reshape(-1, H, D))
        return dq, dk, dv, None, None


def block_sparse_attention(q, k, v, plan, reg_k=None, reg_v=None):
    """q (B, Lq, H, D), k/v (B, Lk, H, D), reg_k/reg_v (1, H, R, D) or None -> (B, Lq, H, D).

    Exactly ``dense_masked_attention`` on the plan's mask (registers always visible); a query with
    no key and no register gets 0 and passes no gradient.
    """
    B, Lq, H, D = q.shape
    qf = q.reshape(B * Lq, H, D).contiguous()
    kf, vf = k.reshape(-1, H, D), v.reshape(-1, H, D)
    R = 0 if reg_k is None else reg_k.shape[2]
    if R:
        kf = torch.cat([reg_k[0].transpose(0, 1).to(k.dtype), kf], dim=0)
        vf = torch.cat([reg_v[0].transpose(0, 1).to(v.dtype), vf], dim=0)
    out = _BlockSparseAttention.apply(qf, kf.contiguous(), vf.contiguous(), R, plan)
    return out.view(B, Lq, H, D)
