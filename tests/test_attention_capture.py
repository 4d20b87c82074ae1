"""camvid.attention.capture: the attention probabilities of chosen queries, exactly as the kernels used them."""

import math

import pytest
import torch

from camvid.attention import AttentionContext, Query, attention_layers, build_cross_frame_attention, capture
from test_attention_integration import cameras  # the same clips: B=2 clips of T=3 frames at 64x96

B, T, C, HEADS = 2, 3, 32, 2
IMAGE_HW, FEAT_HW = (64, 96), (4, 6)
H_, W_ = FEAT_HW
HW = H_ * W_
# (frame, x, y) pixels, plus one query of the second clip / video
QUERIES = [(0, 40.0, 30.0), (2, 5.0, 60.0), Query(1, 90.0, 2.0, sample=1)]
KIND = {"epipolar": "all", "epipolar_ref": "ref", "cross_video": "cross", "full3d": None}


def make_ctx(variant, path, **kw):
    K, c2w = cameras()
    views = 2 if variant == "cross_video" else 1
    return AttentionContext(K=K, c2w=c2w, image_hw=IMAGE_HW, cond_index=torch.tensor([0, 2]), num_views=views,
                            path=path, **kw)


def make_module(variant):
    torch.manual_seed(0)
    kw = {"num_register_tokens": 3} if variant in ("epipolar", "epipolar_ref") else {}
    if variant == "cross_video":
        kw = {"norm_num_groups": 8}
    module = build_cross_frame_attention(variant, C, HEADS, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():  # zero-initialised output layers compute nothing: randomise them
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def brute_force(attn, x, context, mask, query):
    """Float64 softmax over registers + keys of one query, from the layer's own weights and a dense mask."""
    q = attn.to_q(x).double().view(*x.shape[:2], attn.heads, attn.dim_head)
    k = attn.to_k(context).double().view(*context.shape[:2], attn.heads, attn.dim_head)
    row, token = query
    logits = torch.einsum("hd,lhd->hl", q[row, token], k[row]) / math.sqrt(attn.dim_head)
    if mask is not None:
        logits = logits.masked_fill(~mask[row, token], float("-inf"))
    R = attn.num_register_tokens
    if R:
        reg = attn.to_k(attn.register_tokens).double().view(R, attn.heads, attn.dim_head)
        logits = torch.cat([torch.einsum("hd,rhd->hr", q[row, token], reg) / math.sqrt(attn.dim_head), logits], -1)
    return torch.softmax(logits, -1)  # (H, R + Lk)


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("variant", ["epipolar", "epipolar_ref", "full3d", "cross_video"])
def test_capture_equals_brute_force_softmax_and_leaves_outputs_bit_identical(variant, path):
    module = make_module(variant)
    x = torch.randn(B, T, HW, C, generator=torch.Generator().manual_seed(2))
    reference = module(x, make_ctx(variant, path), FEAT_HW)

    inputs = {}  # what each attention layer was called with, for the brute-force check
    layers = attention_layers(module)
    hooks = [m.register_forward_pre_hook(lambda m, a, n=name: inputs.setdefault(n, a[:2]) and None)
             for name, m in module.named_modules() if name in layers]  # (returns None: inputs unchanged)
    with capture(module, queries=QUERIES) as maps:
        out = module(x, make_ctx(variant, path), FEAT_HW)
    for hk in hooks:
        hk.remove()
    assert torch.equal(out, reference)  # capturing changes nothing, bit for bit
    assert maps.layers == layers and maps.timesteps == [-1]  # a bare module call: one unlabelled call

    kind = KIND[variant]
    dense = None if kind is None else make_ctx(variant, "dense").mask(kind, FEAT_HW)  # an independent dense mask
    ref_index = [0, 2]
    for name in layers:
        layer = maps[name]
        attn = dict(module.named_modules())[name]
        R = attn.num_register_tokens
        frames = 1 if variant == "cross_video" else T
        assert layer.probs.shape == (1, HEADS, len(QUERIES), frames, H_, W_)
        assert layer.registers.shape == (1, HEADS, len(QUERIES), R)
        total = layer.probs.sum((-3, -2, -1)) + layer.registers.sum(-1)
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)  # registers included
        for i, qu in enumerate(maps.queries):
            r, c = qu.cell(IMAGE_HW, FEAT_HW)
            cell = r * W_ + c
            if variant == "cross_video":
                row, token = qu.sample * T + qu.frame, cell
            else:
                row, token = qu.sample, qu.frame * HW + cell
            expect = brute_force(attn, *inputs[name], dense, (row, token))
            got_keys = layer.probs[0, :, i]
            if variant == "epipolar_ref":  # only the clip's reference frame holds keys
                others = [f for f in range(T) if f != ref_index[qu.sample]]
                assert not got_keys[:, others].any()
                got_keys = got_keys[:, ref_index[qu.sample]]
            got = torch.cat([layer.registers[0, :, i], got_keys.reshape(HEADS, -1)], -1)
            torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-4)
            if dense is not None:
                mask_row = dense[row, token]
                grid = layer.mask[i] if variant != "epipolar_ref" else layer.mask[i, ref_index[qu.sample]]
                assert torch.equal(grid.reshape(-1), mask_row)  # the mask the kernel used
                assert not got_keys.reshape(HEADS, -1)[:, ~mask_row].any()  # zero outside the mask
            else:
                assert bool(layer.mask.all())


def test_layer_heads_and_errors_are_named():
    module = make_module("epipolar")
    x = torch.randn(B, T, HW, C)
    with capture(module, layers=[0], heads=[1], queries=[(1, 10.0, 10.0)]) as maps:
        module(x, make_ctx("epipolar", "dense"), FEAT_HW)
    assert maps[maps.layers[0]].probs.shape[1] == 1 and maps[maps.layers[0]].heads == [1]
    assert maps.stack().shape == (1, 1, 1, 1, T, *IMAGE_HW)
    with pytest.raises(ValueError, match="matches no cross-frame attention layer; available: epipolar_attn"):
        with capture(module, layers=["nope"], queries=[(0, 1.0, 1.0)]):
            pass
    with pytest.raises(ValueError, match="needs queries"):
        with capture(module):
            pass
    with pytest.raises(ValueError, match="outside the 96x64 video"):
        with capture(module, queries=[(0, 100.0, 1.0)]):
            module(x, make_ctx("epipolar", "dense"), FEAT_HW)
    with pytest.raises(ValueError, match="heads: \\[5\\] out of range"):
        with capture(module, heads=[5], queries=[(0, 1.0, 1.0)]):
            module(x, make_ctx("epipolar", "dense"), FEAT_HW)
    full = make_module("full3d")
    with pytest.raises(ValueError, match="image_hw"):
        with capture(full, queries=[(0, 1.0, 1.0)]):
            full(x, None, FEAT_HW)
    temporal = build_cross_frame_attention("temporal", C, HEADS)
    with pytest.raises(ValueError, match="no cross-frame attention"):
        with capture(temporal, queries=[(0, 1.0, 1.0)]):
            pass


def test_capture_during_sampling_tracks_the_denoiser_timesteps():
    from camvid.diffusion.sampler import make_ddim_schedule, sample_video
    from camvid.models.registry import build_method
    from conftest import TINY, compose

    cfg = compose([*TINY, "model=cami2v", "backbone=tiny_dynamicrafter", "attn=epipolar", "data=synthetic"])
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    for p in method.parameters():  # the zero-initialised camera branch would attend but add nothing
        if not p.any():
            torch.nn.init.normal_(p, std=0.02)
    video = torch.rand(1, 8, 3, 32, 32) * 2 - 1
    H = W = 32
    Kt = torch.tensor([[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1.0]]).expand(1, 8, 3, 3).clone()
    c2w = torch.eye(4).repeat(1, 8, 1, 1)
    c2w[0, :, 0, 3] = torch.linspace(0, 0.5, 8)
    batch = {"video": video, "K": Kt, "c2w": c2w, "cond_index": torch.zeros(1, dtype=torch.long),
             "frame_stride": torch.ones(1, dtype=torch.long), "caption": ["a room"], "num_views": 1}
    guidance = {"scale": 7.5, "uncond_drops": ["text", "image"]}
    steps = make_ddim_schedule(method, 3, spacing="trailing").timesteps.tolist()

    def run():
        return sample_video(method, batch, num_steps=3, guidance=guidance, spacing="trailing", eta=1.0,
                            generator=torch.Generator().manual_seed(0))

    reference = run()
    with capture(method, timesteps=steps[1:], queries=[(3, 16.0, 16.0)]) as maps:
        out = run()
    assert torch.equal(out, reference)
    assert maps.timesteps == steps[1:]  # the denoiser's t, only the ones asked for
    assert len(maps.layers) == len(attention_layers(method)) > 1
    heads = {name: method_heads(method, name) for name in maps.layers}
    assert len(set(heads.values())) > 1  # the tiny UNet's two levels: 4 and 8 heads
    with pytest.raises(ValueError, match="different head counts"):
        maps.register_share()
    shares = maps.register_share(heads="mean")
    assert shares.shape == (len(maps.layers), 2, 1, 1)
    assert bool(((shares > 0) & (shares < 1)).all())
    torch.testing.assert_close(shares[0, :, 0], maps[maps.layers[0]].register_share.mean(1))
    assert "denoise" not in vars(method)  # the method is restored on exit


def method_heads(method, name):
    return dict(method.named_modules())[name].heads


def test_capture_during_a_training_step_leaves_gradients_unchanged():
    module = make_module("epipolar")
    x = torch.randn(B, T, HW, C, generator=torch.Generator().manual_seed(4))

    def grads():
        module.zero_grad()
        module(x, make_ctx("epipolar", "sparse"), FEAT_HW).square().sum().backward()
        return [p.grad.clone() for p in module.parameters()]

    reference = grads()
    with capture(module, queries=QUERIES) as maps:
        captured = grads()
    assert all(torch.equal(a, b) for a, b in zip(reference, captured))
    assert not maps[maps.layers[0]].probs.requires_grad


def test_capture_follows_the_soft_cross_video_band():
    module = make_module("cross_video")
    x = torch.randn(B, T, HW, C, generator=torch.Generator().manual_seed(3))
    reference = module(x, make_ctx("cross_video", "dense", band="soft"), FEAT_HW)
    inputs = {}
    layers = attention_layers(module)
    hooks = [m.register_forward_pre_hook(lambda m, a, n=name: inputs.setdefault(n, a[:2]) and None)
             for name, m in module.named_modules() if name in layers]
    with capture(module, queries=QUERIES) as maps:
        out = module(x, make_ctx("cross_video", "dense", band="soft"), FEAT_HW)
    for hk in hooks:
        hk.remove()
    assert torch.equal(out, reference)
    bias = make_ctx("cross_video", "dense", band="soft").bias("cross", FEAT_HW).double()
    for name in layers:
        attn, layer = dict(module.named_modules())[name], maps[name]
        q = attn.to_q(inputs[name][0]).double().view(*inputs[name][0].shape[:2], HEADS, -1)
        k = attn.to_k(inputs[name][1]).double().view(*inputs[name][1].shape[:2], HEADS, -1)
        assert bool(layer.mask.all())  # a soft band hides no key
        for i, qu in enumerate(maps.queries):
            r, c = qu.cell(IMAGE_HW, FEAT_HW)
            row, token = qu.sample * T + qu.frame, r * W_ + c
            logits = torch.einsum("hd,lhd->hl", q[row, token], k[row]) / math.sqrt(attn.dim_head) + bias[row, token]
            torch.testing.assert_close(layer.probs[0, :, i].reshape(HEADS, -1).double(), torch.softmax(logits, -1),
                                       atol=1e-5, rtol=1e-4)
