"""The five cross-frame attention variants: zero init, exact references, dense vs sparse, layouts."""

import math

import pytest
import torch

from camvid.attention import (
    VARIANTS,
    AttentionContext,
    CrossVideoSyncModule,
    EpipolarBlock,
    build_cross_frame_attention,
    frames_from_temporal_tokens,
    temporal_tokens_from_frames,
)
from camvid.models.manifests import MANIFEST_DIR

MANIFESTS = MANIFEST_DIR  # the official state-dict layouts shipped with the package
B, T, h, w, C, HEADS = 2, 3, 4, 4, 32, 2
HW = h * w


def randomise_output(module: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised output layers random weights so the module computes something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def random_masks(seed: int, views: int = 2):
    """Mask functions standing in for camvid.geometry: random ~15% masks with some empty rows."""
    def mask_fn(ctx, kind, feat_hw):
        g = torch.Generator().manual_seed(seed + hash(kind) % 1000)
        n = feat_hw[0] * feat_hw[1]
        shape = {"all": (B, T * n, T * n), "ref": (B, T * n, n), "cross": (B * T, n, (views - 1) * n)}[kind]
        m = torch.rand(shape, generator=g) < 0.15
        m[:, :3] = False  # rows with no key at all
        return m
    return mask_fn


def explicit_attention(x_q, x_k, attn, mask=None):
    """Reference multi-head attention from the module's own weights: loops over heads, float64."""
    H, D = attn.heads, attn.dim_head
    q = attn.to_q(x_q).double()
    k = attn.to_k(x_k).double()
    v = attn.to_v(x_k).double()
    R = attn.num_register_tokens
    if R:
        k = torch.cat([attn.to_k(attn.register_tokens).double().expand(q.shape[0], -1, -1), k], 1)
        v = torch.cat([attn.to_v(attn.register_tokens).double().expand(q.shape[0], -1, -1), v], 1)
        if mask is not None:
            mask = torch.cat([torch.ones(*mask.shape[:2], R, dtype=torch.bool), mask], -1)
    outs = []
    for i in range(H):
        s = q[..., i * D:(i + 1) * D] @ k[..., i * D:(i + 1) * D].transpose(1, 2) / math.sqrt(D)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        outs.append(torch.softmax(s, -1).nan_to_num(0.0) @ v[..., i * D:(i + 1) * D])
    return attn.to_out(torch.cat(outs, -1).float())


def make_ctx(path="auto", views=1, seed=0):
    return AttentionContext(path=path, num_views=views, cond_index=torch.tensor([0, 2]), mask_fn=random_masks(seed, views),
                            image_hw=(32, 32))


def test_registry_lists_the_five_variants_and_rejects_unknown_names():
    assert set(VARIANTS) == {"temporal", "full3d", "epipolar_ref", "epipolar", "cross_video"}
    with pytest.raises(ValueError, match="temporal.*full3d.*epipolar_ref.*epipolar.*cross_video"):
        build_cross_frame_attention("epipolar_all", C, HEADS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fresh_module_returns_exactly_zero(variant):
    torch.manual_seed(0)
    module = build_cross_frame_attention(variant, C, HEADS)
    x = torch.randn(B, T, HW, C)
    out = module(x, make_ctx(views=2), (h, w))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))


def test_temporal_is_per_pixel_attention_over_frames():
    torch.manual_seed(1)
    module = build_cross_frame_attention("temporal", C, HEADS)
    randomise_output(module)
    x = torch.randn(B, T, HW, C)
    out = module(x, None, (h, w))
    for cell in (0, 7, HW - 1):
        ref = explicit_attention(x[:, :, cell], x[:, :, cell], module.attn)  # (B, T, C)
        torch.testing.assert_close(out[:, :, cell], ref, atol=1e-5, rtol=1e-5)


def test_full3d_is_unmasked_attention_over_all_tokens():
    torch.manual_seed(2)
    module = build_cross_frame_attention("full3d", C, HEADS)
    randomise_output(module)
    x = torch.randn(B, T, HW, C)
    tokens = x.reshape(B, T * HW, C)
    ref = explicit_attention(tokens, tokens, module.epipolar_attn).view(B, T, HW, C)
    torch.testing.assert_close(module(x, None, (h, w)), ref, atol=1e-5, rtol=1e-5)


def _run(module, x, ctx):
    x = x.clone().requires_grad_()
    out = module(x, ctx, (h, w))
    g = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                            [x, *module.parameters()], allow_unused=True)
    return out, g


@pytest.mark.parametrize("variant", ["epipolar", "epipolar_ref", "cross_video", "full3d", "temporal"])
def test_dense_and_sparse_paths_agree_forward_and_grads(variant):
    torch.manual_seed(3)
    module = build_cross_frame_attention(variant, C, HEADS)
    randomise_output(module)
    x = torch.randn(B, T, HW, C)
    out_d, g_d = _run(module, x, make_ctx("dense", views=2, seed=5))
    out_s, g_s = _run(module, x, make_ctx("sparse", views=2, seed=5))
    assert out_d.abs().max() > 0
    torch.testing.assert_close(out_s, out_d, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_s, g_d):
        if a is None:
            assert b is None
            continue
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,variant", [("all", "epipolar"), ("ref", "epipolar_ref")])
def test_epipolar_variants_match_explicit_masked_attention(kind, variant):
    torch.manual_seed(4)
    module = build_cross_frame_attention(variant, C, HEADS)
    randomise_output(module)
    ctx = make_ctx("dense", seed=6)
    x = torch.randn(B, T, HW, C)
    tokens = x.reshape(B, T * HW, C)
    context = tokens if kind == "all" else x[torch.arange(B), ctx.cond_index]
    ref = explicit_attention(tokens, context, module.epipolar_attn, ctx.mask(kind, (h, w))).view(B, T, HW, C)
    torch.testing.assert_close(module(x, ctx, (h, w)), ref, atol=1e-5, rtol=1e-5)


def test_epipolar_empty_row_is_finite_thanks_to_registers():
    torch.manual_seed(5)
    module = build_cross_frame_attention("epipolar", C, HEADS)
    assert module.epipolar_attn.register_tokens.shape == (1, 4, C)
    randomise_output(module)
    empty = torch.zeros(B, T * HW, T * HW, dtype=torch.bool)
    for path in ("dense", "sparse"):
        ctx = AttentionContext(path=path)
        ctx.put_mask("all", (h, w), empty)
        x = torch.randn(B, T, HW, C, requires_grad=True)
        out = module(x, ctx, (h, w))
        assert torch.isfinite(out).all() and out.abs().max() > 0  # the registers answer
        out.sum().backward()
        assert torch.isfinite(x.grad).all()
        assert torch.isfinite(module.epipolar_attn.register_tokens.grad).all()
        assert module.epipolar_attn.register_tokens.grad.abs().max() > 0


@pytest.mark.parametrize("views", [2, 3])
def test_cross_video_pairs_frames_with_the_same_time_index_only(views):
    torch.manual_seed(6)
    Bv = 2 * views  # two groups
    module = CrossVideoSyncModule(C, HEADS, norm_num_groups=8)
    randomise_output(module)
    ctx = AttentionContext(num_views=views, path="dense")
    ctx.put_mask("cross", (h, w), torch.ones(Bv * T, HW, (views - 1) * HW, dtype=torch.bool))
    x = torch.randn(Bv, T, HW, C)
    base = module(x, ctx, (h, w))
    # Change frame 1 of video 1 (group 0): only frame 1 of the other videos of group 0 may change.
    x2 = x.clone()
    x2[1, 1] += torch.randn(HW, C)
    diff = (module(x2, ctx, (h, w)) - base).abs().amax(dim=(2, 3))  # (Bv, T)
    changed = diff > 1e-6
    expected = torch.zeros(Bv, T, dtype=torch.bool)
    expected[:views, 1] = True  # the edited video itself and its partners, frame 1 only
    assert torch.equal(changed, expected)


def test_cross_video_rejects_batches_that_are_not_groups_of_views():
    module = CrossVideoSyncModule(C, HEADS, norm_num_groups=8)
    with pytest.raises(ValueError, match="num_views"):
        module(torch.randn(3, T, HW, C), AttentionContext(num_views=2), (h, w))


def test_context_builds_each_mask_once_for_all_layers():
    calls = []
    fn = random_masks(0)

    def counting(ctx, kind, feat_hw):
        calls.append((kind, feat_hw))
        return fn(ctx, kind, feat_hw)

    ctx = AttentionContext(path="dense", mask_fn=counting, cond_index=torch.tensor([0, 1]))
    layers = [build_cross_frame_attention("epipolar", C, HEADS) for _ in range(3)]
    x = torch.randn(B, T, HW, C)
    for layer in layers:
        layer(x, ctx, (h, w))
    build_cross_frame_attention("epipolar", C, HEADS)(torch.randn(B, T, 4, C), ctx, (2, 2))
    assert calls == [("all", (h, w)), ("all", (2, 2))]
    assert ctx.dense_mask("all", (h, w), 4) is ctx.dense_mask("all", (h, w), 4)


def test_context_validates_options():
    with pytest.raises(ValueError, match="path"):
        AttentionContext(path="fast")
    with pytest.raises(ValueError, match="kind"):
        AttentionContext().mask("epipolar", (2, 2))
    with pytest.raises(ValueError, match="needs cameras"):
        AttentionContext().mask("all", (2, 2))
    assert AttentionContext(image_hw=(320, 512)).infer_feat_hw(40 * 64) == (40, 64)


def test_dynamicrafter_token_layout_round_trip():
    x = torch.randn(B, T, HW, C)
    tokens = temporal_tokens_from_frames(x)
    assert tokens.shape == (B * HW, T, C)
    assert torch.equal(tokens[1 * HW + 5], x[1, :, 5])  # row = b * h*w + cell
    assert torch.equal(frames_from_temporal_tokens(tokens, B), x)
    module = build_cross_frame_attention("full3d", C, HEADS)
    randomise_output(module)
    expected = temporal_tokens_from_frames(module(x, None, (h, w)))
    torch.testing.assert_close(module.forward_temporal_tokens(tokens, None, (h, w)), expected)


def _manifest(name: str, prefix: str) -> dict[str, list[int]]:
    out = {}
    for line in (MANIFESTS / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        if key.startswith(prefix):
            out[key[len(prefix):]] = [int(s) for s in shape.strip("[]").split(",") if s]
    return out


def test_parameter_names_match_official_cami2v_and_cvd_checkpoints():
    cami2v = _manifest("cami2v_256x256.tsv", "model.diffusion_model.input_blocks.4.2.transformer_blocks.0.epipolar.")
    ours = {k: list(v.shape) for k, v in EpipolarBlock(640, 10).state_dict().items()}
    assert ours == cami2v and len(ours) == 6
    cvd = _manifest("cvd_unet_full.tsv", "down_blocks.1.epi_modules.0.")
    module = CrossVideoSyncModule(640, 8)
    assert {k: list(v.shape) for k, v in module.state_dict().items()} == cvd
    coords = module.state_dict()["epi_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.coords"]
    assert coords.dtype == torch.int64 and coords[2, 5].tolist() == [5, 2, 1]
    module.load_state_dict({k: torch.zeros(v) for k, v in cvd.items()}, strict=True)
