"""Exact block-sparse attention over a :class:`~camvid.attention.sparse.TilePlan`, forward and backward.

A plan lists, per query tile (a few cells of a few frames), the keys its bands touch and the tile's
(Q, U) sub-mask. Tiles with similar key counts are packed into chunks; one chunk of n tiles is a
single call of PyTorch's fused CPU attention kernel (``_scaled_dot_product_flash_attention_for_cpu``)
on the gathered blocks, batch n x heads, queries Q, keys R + U (the R register tokens, open to every
query, then the tile's keys), with the sub-mask as an additive bias. Keys and values arrive packed,
(B, R + Lk, 2, H, D): per sample its register rows and its keys, keys and values side by side, the
output layout of ``MultiHeadAttention.project``'s fused k/v product, so one ``index_select`` per
chunk gathers both with no packing pass. The Python loop runs over chunks (tens per level), never
over queries or tiles.

The backward pass re-gathers each chunk and calls the fused kernel's backward with the forward's
saved output and log-sum-exp (recomputation, as FlashAttention): no scores are stored, and the
gathered keys' and values' gradients are scattered back with one ``index_add_`` each per chunk.

In float32 on a CPU the forward pass runs on the compiled kernel of ``camvid.attention.cpu_kernel``
instead where it builds: it reads each tile's queries, keys and values in place and writes each output
row in place (no permutation, gather or output copy). Its outputs and log-sum-exp feed the same
backward pass. ``CAMVID_SPARSE_KERNEL=fused`` keeps the fused kernel for the forward too.

A query with no key and no register is a fully masked row: the fused kernel returns 0 for it and
passes no gradient through it, the convention of every path here.
"""

from __future__ import annotations

import math
import threading

import torch

from camvid.attention import cpu_kernel
from camvid.geometry.epipolar import one_thread  # small or scatter ops: one thread is faster

__all__ = ["block_sparse_attention", "block_sparse_attention_packed", "pack_kv", "prepare_plan"]

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _Workspace:
    """Buffers reused by every chunk of one call, and by the next call on the same plan.

    Fresh multi-megabyte tensors on the CPU come from ``mmap`` and are paid for again in page
    faults on first touch, which made a gather 6x slower than the same gather into a reused buffer
    (measured on the 2-core development host); the gathers therefore write into these buffers. One
    workspace lives on each plan (per thread), so every layer of a level reuses the same pages.
    """

    def __init__(self):
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, like: torch.Tensor, name: str, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = like.new_empty(numel)
            self.bufs[name] = buf
        return buf[:numel].view(shape)


def _workspace(plan) -> _Workspace:
    per_thread = plan.__dict__.setdefault("_workspaces", {})
    return per_thread.setdefault(threading.get_ident(), _Workspace())


def _gather_kv(ws, kv, idx, n):
    """Rows ``idx`` of the packed (rows, 2, H, D) keys and values -> k, v (n, H, X, D) strided views.

    One ``index_select`` gathers both; ``kv`` may be a strided view (the k and v columns of a fused
    q/k/v projection): each row's 2*H*D values only need to be contiguous.
    """
    rows, _, H, D = kv.shape
    out = ws.get(kv, "kv", idx.numel(), 2 * H * D)
    torch.index_select(kv.reshape(rows, 2 * H * D), 0, idx, out=out)
    out = out.view(n, -1, 2, H, D)
    return out[:, :, 0].transpose(1, 2), out[:, :, 1].transpose(1, 2)


def _tile_order(plan):
    """All query ids in chunk order, each chunk's [start, end) in it (chunks are consecutive there), and
    the inverse order (position of each query in chunk order: every query is in exactly one tile)."""
    cached = getattr(plan, "_chunk_order", None)
    if cached is None:
        ids = torch.cat([c.query_ids.reshape(-1) for c in plan.chunks])
        bounds, at = [], 0
        for c in plan.chunks:
            bounds.append((at, at + c.query_ids.numel()))
            at += c.query_ids.numel()
        inverse = torch.empty_like(ids)
        inverse[ids] = torch.arange(ids.numel(), device=ids.device)
        cached = plan._chunk_order = (ids, bounds, inverse)
    return cached


FORWARD_KEY_ALIGN, FORWARD_MAX_PAD = 16, 8
"""The forward pass widens a chunk's R + U key columns to the next multiple of 16 when that adds at
most 8 padding slots (masked with -inf, pointing at a valid row). PyTorch's fused CPU kernel handles
a row's key count modulo 16 in a slow tail: its forward time per tile rises along a sawtooth that
drops at each multiple of 16 (per tile of 32 queries x 5 heads of 64: 44 keys 35 us, 48 keys 22 us;
56 keys 34 us, 64 keys 29 us; ``python benchmarks/fused_widths.py``, docs/performance.md). A long tail is worth padding; a short one is not, as every padding slot is
also gathered (the 32x32 level's chunks: ``epipolar_ref`` kernel forward 0.94x with this rule,
``python benchmarks/blocksparse_ab.py 0feb59a``, while padding every chunk made ``cross_video``'s
36- and 49-key chunks slower). The backward time grows smoothly
with the key count, so the backward pass keeps the plan's width; the forward's saved log-sum-exp is
the same either way (a padding slot adds exp(-inf) = 0)."""


def forward_padding(width: int) -> int:
    """Masked slots the forward pass appends to a chunk of ``width`` = R + U key columns."""
    extra = -width % FORWARD_KEY_ALIGN
    return extra if extra <= FORWARD_MAX_PAD else 0


def _chunk_inputs(chunk, R: int, num_keys: int, dtype, aligned: bool = False):
    """Row ids into the register-extended key tensor and the (n, 1, Q, width) additive bias; width
    R + U, padded as ``FORWARD_KEY_ALIGN`` says when ``aligned`` (padding slots: -inf, the tile's
    first row).

    The extended tensor holds, per sample, its ``R`` register rows and then its ``num_keys`` keys
    (the layout of a projection over ``[registers, context]``): key ``j`` of the flat (B * Lk) key
    axis is row ``j + R * (j // Lk + 1)``; every tile reads sample 0's register rows (the register
    tokens are the same for every sample). Both depend only on the plan, ``R``, the dtype and
    ``aligned``, so they are made on first use and kept on the chunk: every layer and head of the
    level, forward and backward, reuses them.
    """
    cache = chunk.__dict__.setdefault("_ext", {})
    key = (R, num_keys, dtype, aligned)
    if key not in cache:
        n = chunk.key_ids.shape[0]
        if aligned:  # the plan's width, padded; the same tensors when no padding is due
            kids, bias = _chunk_inputs(chunk, R, num_keys, dtype)
            extra = forward_padding(bias.shape[-1])
            if extra:
                kids = kids.view(n, -1)
                kids = torch.cat([kids, kids[:, :1].expand(n, extra)], dim=1).reshape(-1)
                bias = torch.nn.functional.pad(bias, (0, extra), value=float("-inf"))
        else:
            regs = torch.arange(R, device=chunk.key_ids.device).expand(n, R)
            rows = chunk.key_ids + R * (chunk.key_ids // num_keys + 1)
            kids = torch.cat([regs, rows], dim=1).reshape(-1)
            bias = chunk.bias(R, dtype)
        # one register count and dtype per level in practice: keep memory bounded (both widths)
        for stale in [k for k in cache if k[:3] != key[:3]]:
            del cache[stale]
        cache[key] = (kids, bias)
    return cache[key]


def prepare_plan(plan, num_registers: int, dtype=torch.float32) -> None:
    """Make every chunk's key ids and additive bias now (otherwise the first call makes them), and the
    compiled kernel's descriptors where it will run, so the cost of a plan can be measured whole: the
    tiles and slot intervals plus these."""
    with one_thread():  # small ops: see build_tile_plan_from_runs
        for c in plan.chunks:
            _chunk_inputs(c, num_registers, plan.num_keys, dtype)
            _chunk_inputs(c, num_registers, plan.num_keys, dtype, aligned=True)
        if plan.chunks and cpu_kernel.serves(plan.chunks[0].query_ids.device, dtype):
            cpu_kernel.descriptors(plan, num_registers, _inputs(plan, num_registers, dtype))


def _inputs(plan, R, dtype):
    """Each chunk's key row ids and bias, for ``cpu_kernel.descriptors``."""
    return lambda: [_chunk_inputs(c, R, plan.num_keys, dtype) for c in plan.chunks]


def pack_kv(k, v, reg_k=None, reg_v=None):
    """k, v (B, Lk, H, D), reg_k / reg_v (1, H, R, D) or None -> (B, R + Lk, 2, H, D): per sample
    the register tokens, then the keys; keys and values side by side (the layout of
    ``block_sparse_attention_packed``), written in one pass."""
    B, Lk, H, D = k.shape
    R = 0 if reg_k is None else reg_k.shape[2]
    kv = k.new_empty(B, R + Lk, 2, H, D)
    if R:
        kv[:, :R, 0] = reg_k.transpose(1, 2).to(k.dtype)
        kv[:, :R, 1] = reg_v.transpose(1, 2).to(v.dtype)
    kv[:, R:, 0] = k
    kv[:, R:, 1] = v
    return kv


class _BlockSparseAttention(torch.autograd.Function):
    """Queries are permuted once into chunk order, so each chunk reads one contiguous slice of them
    (no per-chunk query gather); keys and values come packed side by side with the register rows
    (``pack_kv``, or straight from a fused projection) and are gathered with one ``index_select``
    per chunk.

    Every tensor op is a parallel region, and on a busy host each region can wait a scheduler
    time slice for a descheduled worker thread; so a chunk costs three ops forward (gather, fused
    attention, and the copy of its output into a buffer in chunk order).

    The forward's outputs are put back in query order by one gather with the inverse order after the
    last chunk, not scattered chunk by chunk: a contiguous copy per chunk and one parallel
    ``index_select`` beat a single-threaded ``index_copy_`` per chunk (``python
    benchmarks/blocksparse_ab.py REV``: forward 0.86-1.03 of the scatter version's time, docs/performance.md).
    The backward's key and value gradients are summed with ``index_add_`` into two contiguous
    (rows, H, D) buffers of the plan's workspace, zeroed per call, and stacked into the packed
    gradient at the end. Summed straight into the k and v columns of one packed (rows, 2, H, D)
    tensor, ``index_add_`` on those strided views fell back to a scatter that took a fifth of the
    ``cross_video`` backward; on contiguous rows it runs its parallel path. The query gradients are
    put in place with a parallel ``index_copy_`` (every query is in one tile). Both together:
    forward+backward 0.65x ``epipolar``, 0.77x ``epipolar_ref``, 0.86x ``cross_video`` (``python
    benchmarks/blocksparse_ab.py REV``, docs/performance.md). The queries in chunk order (when no gradient will need
    them, i.e. they are not saved) and the outputs in chunk order go into the plan's workspace, reused
    by every call: fresh 20 MiB tensors paid their page faults on every call (forward 0.84x for
    ``epipolar_ref``, 0.81x for ``cross_video``, 0.97x for ``epipolar`` with the buffers reused,
    ``python benchmarks/blocksparse_ab.py REV``); likewise the backward's output gradient in chunk order
    (forward+backward 0.88-0.93x for ``epipolar_ref``, 0.99-1.06x for ``cross_video``).
    """

    @staticmethod
    def forward(ctx, q, kv, R, plan):
        # q (Nq, H, D); kv (rows, 2, H, D): per sample R register rows then Lk keys (see _chunk_inputs)
        Nq, H, D = q.shape
        ctx.plan, ctx.R = plan, R
        if cpu_kernel.usable(q, kv):  # the compiled kernel: rows read and written in place
            out, lse = cpu_kernel.tile_attention_forward(q, kv, R, plan, _inputs(plan, R, q.dtype),
                                                         with_lse=any(ctx.needs_input_grad))
            ctx.compiled = True
            ctx.save_for_backward(q, kv, out, *([] if lse is None else [lse]))
            return out
        ctx.compiled = False
        ids, bounds, inverse = _tile_order(plan)
        ws = _workspace(plan)
        # (Nq, H, D) in chunk order; a reused buffer when no gradient will need it (it is saved otherwise)
        qs = q.index_select(0, ids) if any(ctx.needs_input_grad) else torch.index_select(
            q, 0, ids, out=ws.get(q, "q", Nq, H, D))
        ordered = ws.get(q, "out", Nq, H, D)  # outputs in chunk order (every query is in exactly one tile)
        outs, lses = [], []
        for c, (a, b) in zip(plan.chunks, bounds):
            n, Q = c.query_ids.shape
            kids, bias = _chunk_inputs(c, R, plan.num_keys, q.dtype, aligned=True)
            kg, vg = _gather_kv(ws, kv, kids, n)
            o, lse_c = _flash(qs[a:b].view(n, Q, H, D).transpose(1, 2), kg, vg, attn_mask=bias)
            o = o.transpose(1, 2)  # (n, Q, H, D): the kernel's own memory order, no copy
            ordered[a:b].view(n, Q, H, D).copy_(o)
            outs.append(o)
            lses.append(lse_c)  # (n, H, Q)
        ctx.save_for_backward(qs, kv, *outs, *lses)
        return ordered.index_select(0, inverse)

    @staticmethod
    def _compiled_saved(ctx):
        """The compiled forward's saved q, out (query order) and flat lse -> the fused layout: q in chunk
        order, and per chunk its outputs (n, Q, H, D) and log-sum-exp (n, H, Q)."""
        plan = ctx.plan
        q, kv, out, lse = ctx.saved_tensors
        ids, _, _ = _tile_order(plan)
        Nq, H, D = q.shape
        qs = q.index_select(0, ids)
        os_ = out.index_select(0, ids)
        outs, lses, at, off = [], [], 0, 0
        for c in plan.chunks:
            n, Q = c.query_ids.shape
            outs.append(os_[at:at + n * Q].view(n, Q, H, D))
            lses.append(lse[off:off + n * H * Q].view(n, H, Q))
            at += n * Q
            off += n * H * Q
        return qs, kv, outs, lses

    @staticmethod
    def backward(ctx, dout):
        plan, R = ctx.plan, ctx.R
        if ctx.compiled:
            qs, kv, outs, lses = _BlockSparseAttention._compiled_saved(ctx)
        else:
            qs, kv, *rest = ctx.saved_tensors
            nc = len(plan.chunks)
            outs, lses = rest[:nc], rest[nc:]
        Nq, H, D = qs.shape
        ids, bounds, _ = _tile_order(plan)
        ws = _workspace(plan)
        dos = torch.index_select(dout, 0, ids, out=ws.get(dout, "dout", Nq, H, D))  # used in this call only
        rows = kv.shape[0]
        dk = ws.get(kv, "dk", rows, H, D).zero_()
        dv = ws.get(kv, "dv", rows, H, D).zero_()
        dq = qs.new_empty(Nq, H, D)
        for c, (a, b), o, lg in zip(plan.chunks, bounds, outs, lses):
            n, Q = c.query_ids.shape
            kids, bias = _chunk_inputs(c, R, plan.num_keys, qs.dtype)
            kg, vg = _gather_kv(ws, kv, kids, n)

            def view(t, a=a, b=b, n=n, Q=Q):
                return t[a:b].view(n, Q, H, D).transpose(1, 2)

            gq, gk, gv = _flash_backward(view(dos), view(qs), kg, vg, o.transpose(1, 2), lg.contiguous(), 0.0,
                                         False, attn_mask=bias)
            dq.index_copy_(0, ids[a:b], gq.transpose(1, 2).reshape(-1, H, D))
            dk.index_add_(0, kids, gk.transpose(1, 2).reshape(-1, H, D))
            dv.index_add_(0, kids, gv.transpose(1, 2).reshape(-1, H, D))
        return dq, torch.stack((dk, dv), 1), None, None


def _chunk_sdpa(q, kv, qflat, kids, bias, n):
    """One chunk through ``F.scaled_dot_product_attention`` (devices without the CPU fused kernel)."""
    Q = qflat.numel() // n
    H, D = q.shape[1:]
    qg = q.index_select(0, qflat).view(n, Q, H, D).transpose(1, 2)
    kvg = kv.index_select(0, kids).view(n, -1, 2, H, D)
    kg, vg = kvg[:, :, 0].transpose(1, 2), kvg[:, :, 1].transpose(1, 2)
    empty = torch.isinf(bias).all(-1, keepdim=True)  # rows with no key: open them, zero them after
    o = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, attn_mask=bias.masked_fill(empty, 0.0))
    o = o.masked_fill(empty, 0.0)
    return o.transpose(1, 2).reshape(n * Q, H, D)


def _generic(q, kv, R, plan):
    """Autograd through SDPA per chunk, each chunk recomputed in the backward pass (checkpoint)."""
    from torch.utils.checkpoint import checkpoint

    Nq, H, D = q.shape
    outs, ids = [], []
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, kv))
    for c in plan.chunks:
        kids, bias = _chunk_inputs(c, R, plan.num_keys, q.dtype)
        args = (q, kv, c.query_ids.reshape(-1), kids, bias, c.query_ids.shape[0])
        outs.append(checkpoint(_chunk_sdpa, *args, use_reentrant=False) if grad else _chunk_sdpa(*args))
        ids.append(c.query_ids.reshape(-1))
    return q.new_zeros(Nq, H, D).index_copy(0, torch.cat(ids), torch.cat(outs))


def block_sparse_attention_packed(q, kv, plan, num_registers: int = 0):
    """q (B, Lq, H, D), kv (B, R + Lk, 2, H, D) -> (B, Lq, H, D).

    ``kv`` holds per sample the ``num_registers`` register tokens (always visible) and then the
    keys, keys and values side by side (``pack_kv``, or the k/v columns of a fused projection; a
    strided view is fine as long as each row's 2*H*D values are contiguous). Exactly
    ``dense_masked_attention`` on the plan's mask; a query with no key and no register gets 0 and
    passes no gradient.
    """
    B, Lq, H, D = q.shape
    if tuple(kv.shape[2:]) != (2, H, D) or kv.shape[1] != num_registers + plan.num_keys:
        raise ValueError(f"kv must be (B, R + Lk, 2, H, D) = (B, {num_registers} + {plan.num_keys}, 2, {H}, {D}), "
                         f"got {tuple(kv.shape)}")
    qf = q.reshape(B * Lq, H, D)
    kvf = kv.reshape(kv.shape[0] * kv.shape[1], 2, H, D)  # a view for the fused projection's k/v columns
    if q.device.type == "cpu":
        out = _BlockSparseAttention.apply(qf, kvf, num_registers, plan)
    else:  # CUDA: the fused CPU kernel does not exist there (FlexAttention is the fast GPU path)
        out = _generic(qf, kvf, num_registers, plan)
    return out.view(B, Lq, H, D)


def block_sparse_attention(q, k, v, plan, reg_k=None, reg_v=None):
    """q (B, Lq, H, D), k/v (B, Lk, H, D), reg_k/reg_v (1, H, R, D) or None -> (B, Lq, H, D).

    ``block_sparse_attention_packed`` after packing the keys, values and register tokens
    (``pack_kv``, one copy).
    """
    R = 0 if reg_k is None or not reg_k.shape[2] else reg_k.shape[2]
    return block_sparse_attention_packed(q, pack_kv(k, v, reg_k if R else None, reg_v if R else None), plan, R)
