"""Chunked dense attention from epipolar row runs equals the dense path over the whole stored mask."""

from __future__ import annotations

import math

import pytest
import torch

from camvid.attention import (
    AttentionContext,
    EpipolarBlock,
    chunked_masked_attention,
    kernels,
    pad_mask_for_registers,
)
from camvid.geometry import epipolar_mask, epipolar_neighbors

B, T, IMAGE_HW, FEAT_HW, C, HEADS = 2, 3, (48, 64), (3, 4), 16, 2
HW = FEAT_HW[0] * FEAT_HW[1]


def cameras(seed: int):
    """A sideways-and-forward moving clip per batch row with a slow yaw; frame 2 repeats frame 0."""
    g = torch.Generator().manual_seed(seed)
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]).expand(B, T, 3, 3).contiguous()
    c2w = torch.eye(4).repeat(B, T, 1, 1)
    for b in range(B):
        d = torch.randn(3, generator=g)
        for t in range(T):
            a = 0.1 * t * (b + 1)
            c2w[b, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0],
                                              [-math.sin(a), 0, math.cos(a)]])
            c2w[b, t, :3, 3] = d * 0.2 * t
    c2w[:, 2] = c2w[:, 0]
    return K, c2w


def randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def run(module, x, ctx):
    x = x.clone().requires_grad_(True)
    out = module(x, ctx, FEAT_HW)
    out.square().sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("mode", ["all", "ref"])
def test_chunked_dense_from_runs_equals_dense_over_the_stored_mask(mode, monkeypatch):
    K, c2w = cameras(0)
    ref = torch.tensor([1, 0])
    torch.manual_seed(0)
    module = EpipolarBlock(C, HEADS, mode=mode)
    randomise(module, 1)
    x = torch.randn(B, T, HW, C)

    # previous dense path: the whole (B, Lq, R + Lk) mask, seeded into the context
    stored = AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, cond_index=ref, path="dense")
    m = epipolar_mask(K, c2w, IMAGE_HW, FEAT_HW, mode=mode, ref_index=ref)
    if mode == "all":
        stored.put_mask("all", FEAT_HW, m.view(B, T * HW, T * HW))
    else:
        stored.put_mask("ref", FEAT_HW, m[torch.arange(B), :, :, ref].reshape(B, T * HW, HW))
    assert not stored.uses_runs(mode, FEAT_HW)
    want, want_grads = run(module, x, stored)

    monkeypatch.setattr(kernels, "CHUNK_MASK_ELEMENTS", 7 * B * (T * HW + 4))  # several uneven chunks
    chunked = AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, cond_index=ref, path="dense")
    assert chunked.uses_runs(mode, FEAT_HW)
    got, got_grads = run(module, x, chunked)
    assert ("mask", mode, FEAT_HW) not in chunked._cache  # the whole mask was never built
    assert chunked.runs(mode, FEAT_HW) is chunked.runs(mode, FEAT_HW)  # memoised
    assert got.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=3e-5)

    # the sparse path of the same context reads the same runs
    sparse = AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, cond_index=ref, path="sparse")
    torch.testing.assert_close(module(x, sparse, FEAT_HW), want, rtol=1e-5, atol=1e-6)
    index, valid = epipolar_neighbors(K, c2w, IMAGE_HW, FEAT_HW, mode=mode, ref_index=ref)
    if mode == "all":
        got_index, got_valid = sparse.neighbors("all", FEAT_HW)
        assert torch.equal(got_index, index) and torch.equal(got_valid, valid)


@pytest.mark.parametrize("num_registers", [0, 3])
def test_chunked_masked_attention_matches_one_call_with_empty_rows(num_registers):
    g = torch.Generator().manual_seed(2)
    Bq, H, Lq, Lk, D = 2, 2, 13, 9, 4
    q = torch.randn(Bq, H, Lq, D, generator=g, requires_grad=True)
    k = torch.randn(Bq, H, num_registers + Lk, D, generator=g, requires_grad=True)
    v = torch.randn(Bq, H, num_registers + Lk, D, generator=g, requires_grad=True)
    mask = torch.rand(Bq, Lq, Lk, generator=g) < 0.3
    mask[:, 4] = False  # a row with no key
    whole = kernels.dense_masked_attention(q, k, v, *pad_mask_for_registers(mask, num_registers))
    chunked = chunked_masked_attention(q, k, v, lambda q0, q1: mask[:, q0:q1], num_registers,
                                       chunk_elements=4 * Bq * (num_registers + Lk))
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    if num_registers == 0:
        assert chunked[:, :, 4].abs().max() == 0
    grads_whole = torch.autograd.grad(whole.sum(), (q, k, v))
    grads_chunked = torch.autograd.grad(chunked.sum(), (q, k, v))
    for a, b in zip(grads_chunked, grads_whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_custom_mask_fn_keeps_the_stored_mask_path():
    K, c2w = cameras(1)
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, path="dense",
                           mask_fn=lambda c, kind, fh: torch.ones(B, T * HW, T * HW, dtype=torch.bool))
    assert not ctx.uses_runs("all", FEAT_HW)
    # the hard cross-video band has runs; the soft band is a float bias and has none
    assert AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW).uses_runs("cross", FEAT_HW)
    assert not AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, band="soft").uses_runs("cross", FEAT_HW)
    with pytest.raises(ValueError, match="no row runs"):
        ctx.runs("bogus", FEAT_HW)
