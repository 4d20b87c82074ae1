"""CVD cross-video synchronisation modules on the AnimateDiff backbone."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from camvid.geometry.epipolar import cross_view_band_mask
from camvid.models.animatediff import AnimateDiffT2V, build_animatediff_method, convert_to_official_state_dict
from camvid.models.base import CameraInputs
from camvid.models.cvd import EpiModule, install_cvd_modules
from camvid.models.manifests import load_manifest

T, HW = 4, 32


def pair_batch(P: int = 1, seed: int = 0) -> dict:
    """P folded pairs, interleaved [a0, b0, a1, b1, ...]: both videos start at the same camera."""
    gen = torch.Generator().manual_seed(seed)
    B = 2 * P
    c2w = torch.eye(4).repeat(B, T, 1, 1)
    ramp = torch.linspace(0, 1, T)
    c2w[0::2, :, 0, 3] = ramp  # video a dollies right
    c2w[1::2, :, 1, 3] = ramp * (1 + torch.rand(P, 1, generator=gen))  # video b moves down
    K = torch.tensor([[30.0, 0, HW / 2], [0, 30.0, HW / 2], [0, 0, 1]]).repeat(B, T, 1, 1)
    return dict(
        video=torch.rand(B, T, 3, HW, HW, generator=gen) * 2 - 1, K=K, c2w=c2w,
        caption=[f"scene {i // 2}" for i in range(B)], cond_index=torch.zeros(B, dtype=torch.long), num_views=2,
    )


@pytest.fixture(scope="module")
def cvd() -> AnimateDiffT2V:
    torch.manual_seed(0)
    return build_animatediff_method("cvd", "tiny", num_frames=T)


def perturbed(model: AnimateDiffT2V, std: float = 0.2) -> AnimateDiffT2V:
    """A copy whose zero-initialised epi ``proj_out`` layers hold random weights (a "trained" CVD)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.sync.modules:
            torch.nn.init.normal_(module.epi_transformer.proj_out.weight, std=std)
    return model


def run(model, batch, t=None):
    z = model.encode_video(batch["video"])
    t = torch.full((z.shape[0],), 400) if t is None else t
    return model.denoise(z, t, model.conditions(batch, z))


def test_state_dict_keys_follow_cvd_layout(cvd):
    keys = [k for k in cvd.unet.state_dict() if ".epi_modules." in k]
    assert "down_blocks.0.epi_modules.1.epi_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight" in keys
    assert "up_blocks.1.epi_modules.2.epi_transformer.proj_out.bias" in keys
    assert "down_blocks.1.epi_modules.0.epi_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.coords" in keys
    assert len(cvd.sync.modules) == 2 * 2 + 2 * 3


def test_pair_forward_backward_trains_only_epi_modules(cvd):
    model = copy.deepcopy(cvd)
    out = run(model, pair_batch(P=2))
    assert out.shape == (4, 12, T, 16, 16) and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if ".epi_modules." in name:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, f"frozen {name} got a gradient"
    proj = [m.epi_transformer.proj_out.weight for m in model.sync.modules]
    assert all(float(w.grad.abs().sum()) > 0 for w in proj)


def test_zero_init_epi_modules_leave_cameractrl_bit_identical(cvd):
    torch.manual_seed(0)
    cameractrl = build_animatediff_method("cameractrl", "tiny", num_frames=T)
    cameractrl.load_state_dict(
        {k: v for k, v in cvd.state_dict().items() if ".epi_modules." not in k}, strict=True
    )
    batch = pair_batch(P=1)
    z = cvd.encode_video(batch["video"])
    t = torch.tensor([10, 900])
    with torch.no_grad():
        ref = cameractrl.denoise(z, t, cameractrl.conditions(dict(batch, num_views=1), z))
        ours = cvd.denoise(z, t, cvd.conditions(batch, z))
        trained = perturbed(cvd).denoise(z, t, cvd.conditions(batch, z))
    assert torch.equal(ref, ours)
    assert not torch.allclose(ref, trained, atol=1e-4)


def test_videos_talk_only_to_their_partner(cvd):
    model = perturbed(cvd)
    batch = pair_batch(P=2)
    # no coincident cameras: pseudo lines (drawn per batch slot) would break the swap symmetry below
    batch["c2w"][1::2, :, 2, 3] += 0.3
    z = model.encode_video(batch["video"])
    t = torch.full((4,), 400)
    with torch.no_grad():
        base = model.denoise(z, t, model.conditions(batch, z))
        z2 = z.clone()
        z2[1] += torch.randn_like(z2[1])  # change video b of pair 0
        moved = model.denoise(z2, t, model.conditions(batch, z2))
        # the same pairs in swapped batch order give the same outputs, swapped
        order = torch.tensor([2, 3, 0, 1])
        swapped = {k: (v[order] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        swapped["caption"] = [batch["caption"][i] for i in order]
        out_swapped = model.denoise(z[order], t, model.conditions(swapped, z[order]))
    assert not torch.allclose(moved[0], base[0], atol=1e-5), "video a must see its partner"
    assert torch.equal(moved[2:], base[2:]), "the other pair must not see pair 0"
    torch.testing.assert_close(out_swapped, base[order], rtol=1e-5, atol=1e-5)


def reference_cross_video(x, module, K, c2w, image_hw, tau):
    """Obviously-correct EpiAttention: loops over samples, frames and heads with an explicit softmax."""
    B_T, L, C = x.shape
    B = K.shape[0]
    h = w = int(math.isqrt(L))
    heads = module.heads
    out = torch.zeros_like(x)
    for s in range(B):
        p = s ^ 1
        mask = cross_view_band_mask(K[s:s + 1], c2w[s:s + 1], K[p:p + 1], c2w[p:p + 1], image_hw, (h, w), tau=tau)[0]
        for t in range(T):
            xq, xk = x[s * T + t], x[p * T + t]
            q, k, v = module.to_q(xq), module.to_k(xk), module.to_v(xk)
            rows = []
            for head in range(heads):
                sl = slice(head * C // heads, (head + 1) * C // heads)
                logits = q[:, sl] @ k[:, sl].T / math.sqrt(C // heads)
                logits = logits.masked_fill(~mask[t], float("-inf"))
                att = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # empty band -> zero row
                rows.append(att @ v[:, sl])
            out[s * T + t] = module.to_out[0](torch.cat(rows, dim=-1))
    return out


def test_masked_cross_video_attention_matches_reference():
    torch.manual_seed(0)
    batch = pair_batch(P=1, seed=3)
    camera = CameraInputs(K=batch["K"].double(), c2w=batch["c2w"].double(), image_hw=(HW, HW), num_views=2)

    class Host(torch.nn.Module):  # a minimal "UNet" with one block to hang the module on
        pass

    module = EpiModule(32, heads=2, norm_num_groups=8).double()
    attention = module.epi_transformer.transformer_blocks[0].attention_blocks[0]
    from camvid.models.cvd.sync import CrossVideoSync

    sync = CrossVideoSync([module], tau=3.0, masked=True, path="auto", seed=0)
    x = torch.randn(2 * T, 64, 32, dtype=torch.float64)
    with sync.bind(camera, 2, T) as geometry:
        rows = geometry.partner_rows(x.device)
        got = attention(x, rows, (8, 8), sync.attend)
        mask = geometry.mask((8, 8))
    want = reference_cross_video(x, attention, camera.K, camera.c2w, (HW, HW), 3.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert 0 < float(mask.float().mean()) < 0.5, "the band must select a strict subset of the partner frame"
    del Host


def test_cvd_needs_pairs(cvd):
    batch = pair_batch(P=1)
    with pytest.raises(ValueError, match="num_views"):
        cvd.conditions(dict(batch, num_views=1))
    z = cvd.encode_video(batch["video"])
    cond = cvd.conditions(batch, z)
    with pytest.raises(ValueError, match="even batch"):
        cvd.denoise(z[:1], torch.tensor([1]), cond.repeat(1).__class__(**{**cond.__dict__, "text": cond.text[:1],
                                                                         "camera": cond.camera.select(torch.tensor([0]))}))
    with pytest.raises(ValueError, match="CrossVideoSync.bind"):
        cvd.unet(z, torch.tensor([1, 1]), encoder_hidden_states=cond.text.repeat_interleave(T, 0))


def test_unmasked_ablation_attends_the_whole_partner_frame(cvd):
    model = perturbed(cvd)
    plain = build_animatediff_method("cvd", "tiny", num_frames=T, attn_kwargs={"masked": False})
    plain.load_state_dict(model.state_dict())
    batch = pair_batch(P=1)
    with torch.no_grad():
        assert not torch.allclose(run(model, batch), run(plain, batch), atol=1e-5)


# ----------------------------------------------------------------------------------- full size


@pytest.fixture(scope="module")
def full_cvd() -> AnimateDiffT2V:
    return build_animatediff_method("cvd", "full", num_frames=16, image_hw=(256, 384), device="meta")


def test_full_size_trainable_count_and_names(full_cvd):
    trainable = {n: p for n, p in full_cvd.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == 417_137_600
    manifest = load_manifest("cvd_unet_trainable_dict")
    ours = {n.removeprefix("unet."): tuple(p.shape) for n, p in trainable.items()}
    assert set(ours) == set(manifest)
    assert all(ours[k] == manifest[k].shape for k in manifest)


def test_full_cvd_unet_matches_the_official_layout(full_cvd):
    official = convert_to_official_state_dict(full_cvd.unet.state_dict())
    manifest = load_manifest("cvd_unet_full")
    assert set(official) == set(manifest)
    assert all(tuple(official[k].shape) == manifest[k].shape for k in manifest)
    coords = [k for k in manifest if k.endswith("pos_encoder.coords")]
    assert len(coords) == 40 and all(official[k].dtype == torch.int64 for k in coords)
    assert sum(p.numel() for p in full_cvd.unet.parameters()) == 1_712_757_764


def test_install_twice_is_refused():
    unet = build_animatediff_method("cameractrl", "tiny", num_frames=T).unet
    install_cvd_modules(unet)
    with pytest.raises(ValueError, match="already has epi_modules"):
        install_cvd_modules(unet)
