"""Cross-frame attention with real camera masks (camvid.geometry) and inside diffusers attention."""

import math

import pytest
import torch

from camvid.attention import (
    AttentionContext,
    ContextSlot,
    CrossFrameAttnProcessor,
    build_cross_frame_attention,
)

geo = pytest.importorskip("camvid.geometry.epipolar")

B, T, C, HEADS = 2, 3, 32, 2
IMAGE_HW, FEAT_HW = (64, 96), (4, 6)
HW = FEAT_HW[0] * FEAT_HW[1]


def cameras(batch=B, frames=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = IMAGE_HW
    K = torch.tensor([[0.9 * W, 0.0, W / 2], [0.0, 0.9 * W, H / 2], [0.0, 0.0, 1.0]]).expand(batch, frames, 3, 3)
    c2w = torch.eye(4).repeat(batch, frames, 1, 1)
    for b in range(batch):
        direction = torch.randn(3, generator=g)
        yaw = float(torch.rand(1, generator=g)) - 0.5
        for t in range(frames):
            a = yaw * t / frames
            c2w[b, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
            c2w[b, t, :3, 3] = 0.3 * t * direction / direction.norm()
    return K.contiguous(), c2w


def randomise_output(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("variant,views", [("epipolar", 1), ("epipolar_ref", 1), ("cross_video", 2)])
def test_geometry_masks_dense_equals_sparse_from_neighbor_lists(variant, views):
    K, c2w = cameras()
    torch.manual_seed(0)
    module = build_cross_frame_attention(variant, C, HEADS, **({"norm_num_groups": 8} if views > 1 else {}))
    randomise_output(module)
    x = torch.randn(B, T, HW, C)
    outs = []
    for path in ("dense", "sparse"):
        ctx = AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, cond_index=torch.tensor([0, 2]),
                               num_views=views, path=path)
        outs.append(module(x, ctx, FEAT_HW))
    assert outs[0].abs().max() > 0
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


def test_context_masks_follow_the_geometry_contract():
    K, c2w = cameras()
    ref = torch.tensor([1, 2])
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, cond_index=ref, num_views=2)
    full = geo.epipolar_mask(K, c2w, IMAGE_HW, FEAT_HW)  # (B, T, hw, T, hw)
    assert torch.equal(ctx.mask("all", FEAT_HW), full.reshape(B, T * HW, T * HW))
    assert torch.equal(ctx.mask("ref", FEAT_HW), full[torch.arange(B), :, :, ref].reshape(B, T * HW, HW))
    cross = ctx.mask("cross", FEAT_HW)
    partner = torch.tensor([1, 0])
    # default hard band: half a feature cell's diagonal at every level, like the epipolar masks
    assert ctx.band_tau(FEAT_HW) == geo.default_threshold(IMAGE_HW, FEAT_HW)
    band = geo.cross_view_band_mask(K, c2w, K[partner], c2w[partner], IMAGE_HW, FEAT_HW,
                                    tau=geo.default_threshold(IMAGE_HW, FEAT_HW))
    assert torch.equal(cross, band.reshape(B * T, HW, HW))
    runs = ctx.runs("cross", FEAT_HW)  # the run form of the same band
    assert torch.equal(runs.rows(0, HW), cross)
    for kind in ("all", "ref", "cross"):
        index, valid = ctx.neighbors(kind, FEAT_HW)
        rebuilt = torch.zeros(*index.shape[:2], ctx.mask(kind, FEAT_HW).shape[-1] + 1, dtype=torch.bool)
        rebuilt.scatter_(-1, torch.where(valid, index, rebuilt.shape[-1] - 1), True)
        assert torch.equal(rebuilt[..., :-1], ctx.mask(kind, FEAT_HW)), kind


def test_diffusers_processor_adds_the_cross_frame_update_to_motion_module_attention():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    K, c2w = cameras()
    torch.manual_seed(1)
    attn = Attention(query_dim=C, heads=HEADS, dim_head=C // HEADS)
    tokens = torch.randn(B * HW, T, C)  # motion-module layout (B*h*w, T, C)
    base = AttnProcessor2_0()(attn, tokens)
    cross = build_cross_frame_attention("epipolar", C, HEADS)
    slot = ContextSlot()
    attn.set_processor(CrossFrameAttnProcessor(cross, slot))
    assert "processor.cross_frame.epipolar_attn.register_tokens" in dict(attn.named_parameters())
    assert torch.equal(attn(tokens), base)  # no context: the standard attention
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, path="dense")
    slot.ctx = ctx
    assert torch.equal(attn(tokens), base)  # fresh module: exactly zero update
    randomise_output(cross)
    x = tokens.view(B, HW, T, C).transpose(1, 2)
    expected = base + cross(x, ctx, FEAT_HW).transpose(1, 2).reshape(B * HW, T, C)
    torch.testing.assert_close(attn(tokens), expected, atol=1e-6, rtol=1e-6)


def test_processor_inside_an_animatediff_motion_module():
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    K, c2w = cameras()
    torch.manual_seed(2)
    motion = AnimateDiffTransformer3D(num_attention_heads=HEADS, attention_head_dim=C // HEADS, in_channels=C,
                                      norm_num_groups=8, positional_embeddings="sinusoidal",
                                      num_positional_embeddings=T).eval()
    sample = torch.randn(B * T, C, *FEAT_HW)  # (B*T, C, h, w) as UNetMotionModel passes it
    with torch.no_grad():
        base = motion(sample, num_frames=T)
        attn1 = motion.transformer_blocks[0].attn1
        slot = ContextSlot(AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW))
        cross = build_cross_frame_attention("epipolar", C, HEADS)
        attn1.set_processor(CrossFrameAttnProcessor(cross, slot))
        assert torch.equal(motion(sample, num_frames=T), base)  # zero-initialised: bit-identical
        randomise_output(cross)
        changed = motion(sample, num_frames=T)
    assert torch.isfinite(changed).all() and (changed - base).abs().max() > 1e-4
    assert any(k.startswith("transformer_blocks.0.attn1.processor.cross_frame.epipolar_attn.")
               for k in motion.state_dict())


def test_cross_video_with_a_sideways_partner_horizontal_bands():
    """Same rotation, partner shifted along x: every cross-view line is horizontal (a = 0)."""
    K, c2w = cameras(batch=1)
    K2, c2w2 = K.repeat(2, 1, 1, 1), c2w.repeat(2, 1, 1, 1)
    c2w2[1, :, :3, 3] += torch.tensor([0.2, 0.0, 0.0])
    torch.manual_seed(3)
    module = build_cross_frame_attention("cross_video", C, HEADS, norm_num_groups=8)
    randomise_output(module)
    x = torch.randn(2, T, HW, C)
    outs = [module(x, AttentionContext(K=K2, c2w=c2w2, image_hw=IMAGE_HW, num_views=2, path=p), FEAT_HW)
            for p in ("dense", "sparse")]
    assert torch.isfinite(outs[0]).all() and outs[0].abs().max() > 0
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
