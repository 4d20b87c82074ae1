"""Dense and block-sparse attention kernels against an explicit float reference."""

import pytest
import torch

from camvid.attention import (
    build_tile_plan,
    dense_masked_attention,
    mask_to_neighbors,
    pad_mask_for_registers,
    tiled_sparse_attention,
)


def reference_attention(q, k, v, mask, reg_k=None, reg_v=None):
    """Explicit softmax(q k^T / sqrt(D) + mask) v per head; q (B, Lq, H, D); rows with no key -> 0."""
    qh, kh, vh = q.transpose(1, 2).double(), k.transpose(1, 2).double(), v.transpose(1, 2).double()
    B, Lq = q.shape[:2]
    if reg_k is not None:
        kh = torch.cat([reg_k.double().expand(B, -1, -1, -1), kh], 2)
        vh = torch.cat([reg_v.double().expand(B, -1, -1, -1), vh], 2)
        mask = torch.cat([torch.ones(B, Lq, reg_k.shape[2], dtype=torch.bool), mask], -1)
    scores = qh @ kh.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return (probs @ vh).transpose(1, 2).to(q.dtype)


def random_mask(B, Lq, Lk, density, seed, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, Lq, Lk, generator=g) < density
    for r in empty_rows:
        m[:, r] = False
    return m


def qkv(B, Lq, Lk, H, D, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(B, L, H, D, generator=g) for L in (Lq, Lk, Lk)]
    return [t.requires_grad_(requires_grad) for t in ts]


def dense(q, k, v, mask, reg_k=None, reg_v=None):
    B = q.shape[0]
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)
    R = 0 if reg_k is None else reg_k.shape[2]
    if R:
        kh = torch.cat([reg_k.expand(B, -1, -1, -1), kh], 2)
        vh = torch.cat([reg_v.expand(B, -1, -1, -1), vh], 2)
    m, row_valid = pad_mask_for_registers(mask, R)
    return dense_masked_attention(q.transpose(1, 2), kh, vh, m, row_valid).transpose(1, 2)


@pytest.mark.parametrize("registers", [0, 3])
def test_dense_matches_explicit_reference_with_empty_rows(registers):
    B, T, h, w, H, D = 2, 3, 4, 4, 2, 8
    L = T * h * w
    mask = random_mask(B, L, L, 0.1, seed=1, empty_rows=(0, 5))
    q, k, v = qkv(B, L, L, H, D, seed=2)
    g = torch.Generator().manual_seed(3)
    reg_k = torch.randn(1, H, registers, D, generator=g) if registers else None
    reg_v = torch.randn(1, H, registers, D, generator=g) if registers else None
    out = dense(q, k, v, mask, reg_k, reg_v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_attention(q, k, v, mask, reg_k, reg_v), atol=1e-5, rtol=1e-5)
    if not registers:
        assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))


@pytest.mark.parametrize("tile_hw,tile_frames", [((1, 1), 1), ((2, 2), 1), ((2, 4), 1), ((2, 2), 3)])
@pytest.mark.parametrize("registers", [0, 2])
def test_sparse_equals_dense_forward_and_grads(tile_hw, tile_frames, registers):
    B, T, h, w, H, D = 2, 3, 4, 4, 2, 8
    L = T * h * w
    mask = random_mask(B, L, L, 0.08, seed=4, empty_rows=(1, 17))
    g = torch.Generator().manual_seed(5)
    reg = [torch.randn(1, H, registers, D, generator=g).requires_grad_() for _ in range(2)] if registers else [None] * 2
    q, k, v = qkv(B, L, L, H, D, seed=6, requires_grad=True)
    plan = build_tile_plan((h, w), mask=mask, tile_hw=tile_hw, tile_frames=tile_frames, chunk_keys=64)  # many chunks
    assert len(plan.chunks) > 1
    out_s = tiled_sparse_attention(q, k, v, plan, *reg)
    out_d = dense(q, k, v, mask, *reg)
    torch.testing.assert_close(out_s, out_d, atol=1e-5, rtol=1e-5)
    params = [t for t in (q, k, v, *reg) if t is not None]
    gout = torch.randn_like(out_d)
    grads_s = torch.autograd.grad(out_s, params, gout)
    grads_d = torch.autograd.grad(out_d, params, gout)
    for gs, gd in zip(grads_s, grads_d):
        assert torch.isfinite(gs).all()
        torch.testing.assert_close(gs, gd, atol=1e-5, rtol=1e-5)


def test_plan_from_neighbors_equals_plan_from_mask():
    B, T, h, w, H, D = 1, 2, 4, 6, 2, 4
    Lq, Lk = T * h * w, h * w  # rectangular: queries of all frames onto one frame
    mask = random_mask(B, Lq, Lk, 0.2, seed=7, empty_rows=(3,))
    index, valid = mask_to_neighbors(mask)
    q, k, v = qkv(B, Lq, Lk, H, D, seed=8)
    a = tiled_sparse_attention(q, k, v, build_tile_plan((h, w), mask=mask))
    b = tiled_sparse_attention(q, k, v, build_tile_plan((h, w), neighbors=(index, valid), num_keys=Lk))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a, reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_mask_to_neighbors_lists_exactly_the_true_entries():
    mask = random_mask(2, 7, 11, 0.3, seed=9, empty_rows=(2,))
    index, valid = mask_to_neighbors(mask)
    rebuilt = torch.zeros(2, 7, 12, dtype=torch.bool)
    rebuilt.scatter_(-1, torch.where(valid, index, 11), True)
    assert torch.equal(rebuilt[..., :11], mask)
    assert index.shape[-1] == int(mask.sum(-1).max())
    ordered = torch.where(valid, index, 10**6)
    assert ((ordered[..., 1:] > ordered[..., :-1]) | ~valid[..., 1:]).all()  # ascending, padding last
    with pytest.raises(ValueError, match="max_keys"):
        mask_to_neighbors(mask, max_keys=1)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="bool"):
        pad_mask_for_registers(torch.zeros(1, 2, 2), 0)
    with pytest.raises(ValueError, match="divide"):
        build_tile_plan((3, 3), mask=torch.zeros(1, 9, 9, dtype=torch.bool), tile_hw=(2, 2))
    with pytest.raises(ValueError, match="tile_frames=2 does not divide the 3 query frames"):
        build_tile_plan((2, 2), mask=torch.zeros(1, 12, 12, dtype=torch.bool), tile_frames=2)
    with pytest.raises(ValueError, match="exactly one"):
        build_tile_plan((2, 2))
