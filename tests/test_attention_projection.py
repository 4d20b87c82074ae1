"""MultiHeadAttention.project: the fused k/v GEMM equals the official separate to_q/to_k/to_v layers."""

import pytest
import torch
from torch import nn

from camvid.attention import AttentionContext, EpipolarBlock
from camvid.attention.blocksparse import pack_kv
from camvid.attention.sparse import build_tile_plan, tiled_sparse_attention, tiled_sparse_attention_packed
from camvid.attention.variants import CrossViewAttention, EpipolarAttention

C, HEADS = 16, 2


def separate(attn, x, context):
    """The official computation: three Linear layers, registers prepended to the context."""
    R = attn.num_register_tokens
    if R:
        context = torch.cat([attn.register_tokens.expand(x.shape[0], -1, -1), context], 1)
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    H, D = attn.heads, attn.dim_head
    return q.view(*q.shape[:2], H, D), torch.stack([k.view(*k.shape[:2], H, D), v.view(*v.shape[:2], H, D)], 2)


@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("registers", [0, 3])
def test_fused_projection_equals_separate_layers_values_and_gradients(self_attention, registers):
    torch.manual_seed(0)
    attn = EpipolarAttention(C, HEADS, num_register_tokens=registers).double()
    x = torch.randn(2, 5, C, dtype=torch.float64, requires_grad=True)
    context = x if self_attention else torch.randn(2, 7, C, dtype=torch.float64, requires_grad=True)
    q, kv = attn.project(x, context)
    q_ref, kv_ref = separate(attn, x, context)
    torch.testing.assert_close(q, q_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(kv, kv_ref, rtol=0, atol=1e-12)
    wq, wkv = torch.randn_like(q), torch.randn_like(kv)
    inputs = [x, *attn.parameters()] + ([] if self_attention else [context])
    inputs = [t for t in inputs if t.requires_grad]
    got = torch.autograd.grad((q * wq).sum() + (kv * wkv).sum(), inputs, allow_unused=True)
    ref = torch.autograd.grad((q_ref * wq).sum() + (kv_ref * wkv).sum(), inputs, allow_unused=True)
    for a, b in zip(got, ref):
        if b is None:  # to_out takes no part in the projections
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_fused_projection_keeps_biases_of_mixed_layers():
    """A layer with a bias next to layers without one: the fused product adds exactly that bias."""
    torch.manual_seed(1)
    attn = CrossViewAttention(C, HEADS).double()
    attn.to_v = nn.Linear(C, C, bias=True).double()
    x, context = torch.randn(3, 4, C, dtype=torch.float64), torch.randn(3, 6, C, dtype=torch.float64)
    q, kv = attn.project(x, context)
    q_ref, kv_ref = separate(attn, x, context)
    torch.testing.assert_close(q, q_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(kv, kv_ref, rtol=0, atol=1e-12)


def test_state_dict_keys_stay_the_official_layout():
    """The fused projection adds no parameter or buffer: CamI2V's epipolar keys load strictly."""
    block = EpipolarBlock(C, HEADS)
    keys = set(block.state_dict())
    assert keys == {"epipolar_attn.register_tokens", "epipolar_attn.to_q.weight", "epipolar_attn.to_k.weight",
                    "epipolar_attn.to_v.weight", "epipolar_attn.to_out.0.weight", "epipolar_attn.to_out.0.bias"}
    other = EpipolarBlock(C, HEADS)
    other.load_state_dict(block.state_dict(), strict=True)
    x = torch.randn(1, 6, C)
    for a, b in zip(block.epipolar_attn.project(x, x), other.epipolar_attn.project(x, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_packed_sparse_entry_reads_a_strided_fused_projection():
    """tiled_sparse_attention_packed on the k/v columns of a (B, R + L, 3, H, D) projection (a strided
    view, batch of 2, registers) equals the unpacked entry, forward and gradients (fp64)."""
    g = torch.Generator().manual_seed(3)
    B, L, R, H, D, hw = 2, 8, 2, 2, 4, (2, 4)
    mask = torch.rand(B, L, L, generator=g) < 0.4
    mask[:, 0] = False  # a row with no key: the registers keep it defined
    plan = build_tile_plan(hw, mask=mask, tile_hw=(1, 4), chunk_keys=6)
    qkv = torch.randn(B, R + L, 3, H, D, generator=g, dtype=torch.float64, requires_grad=True)
    q, kv = qkv[:, R:, 0], qkv[:, :, 1:]
    got = tiled_sparse_attention_packed(q, kv, plan, R)
    regs = (qkv[:1, :R, 1].transpose(1, 2), qkv[:1, :R, 2].transpose(1, 2))
    ref = tiled_sparse_attention(q, qkv[:, R:, 1], qkv[:, R:, 2], plan, *regs)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    ga, = torch.autograd.grad((got * w).sum(), qkv)
    # the reference reads sample 0's registers for both samples: compare the registers' total gradient
    gb, = torch.autograd.grad((ref * w).sum(), qkv)
    torch.testing.assert_close(ga[:, R:], gb[:, R:], rtol=0, atol=1e-12)
    torch.testing.assert_close(ga[:, :R, 1:].sum(0), gb[:, :R, 1:].sum(0), rtol=0, atol=1e-12)
    assert torch.equal(pack_kv(qkv[:, R:, 1], qkv[:, R:, 2], *regs)[:1], kv[:1].detach())
    with pytest.raises(ValueError, match=r"kv must be \(B, R \+ Lk, 2, H, D\)"):
        tiled_sparse_attention_packed(q, kv[:, :, :1], plan, R)


def test_module_paths_agree_after_fusion():
    """The dense, sparse and unmasked paths of the fused module agree with the explicit computation."""
    torch.manual_seed(4)
    block = EpipolarBlock(C, HEADS).double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(1, 2, 8, C, dtype=torch.float64)
    mask = torch.rand(1, 16, 16) < 0.3

    def ctx(path):
        return AttentionContext(path=path, mask_fn=lambda c, k, f: mask, image_hw=(16, 32))

    attn = block.epipolar_attn
    tokens = x.reshape(1, 16, C)
    q, kv = separate(attn, tokens, tokens)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kv[:, :, 0]) / attn.dim_head ** 0.5
    full = torch.cat([torch.ones(1, 16, 4, dtype=torch.bool), mask], -1)
    s = s.masked_fill(~full[:, None], float("-inf"))
    ref = attn.to_out(torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), kv[:, :, 1]).reshape(1, 16, C))
    for path in ("dense", "sparse"):
        torch.testing.assert_close(block(x, ctx(path), (2, 4)).reshape(1, 16, C), ref, rtol=0, atol=1e-10)
