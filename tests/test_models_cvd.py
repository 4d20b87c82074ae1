"""CVD cross-video synchronisation modules on the AnimateDiff backbone."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from camvid.geometry.epipolar import cross_view_band_mask
from camvid.models.animatediff import (
    AnimateDiffT2V,
    build_animatediff_method,
    build_unet,
    convert_to_official_state_dict,
)
from camvid.models.base import CameraInputs
from camvid.models.cvd import install_cvd_modules
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


def reference_epi_module(x, module, K, c2w, image_hw, tau):
    """Obviously-correct CVD epi module on (B*T, C, h, w): loops over samples, frames and heads,
    explicit softmax over the partner frame's cells inside the band, residual added at the end."""
    BT, C, h, w = x.shape
    B = K.shape[0]
    et = module.epi_transformer
    partner = torch.arange(B) ^ 1
    # one call over the batch: pseudo lines of coincident cameras are drawn per batch slot
    masks = cross_view_band_mask(K, c2w, K[partner], c2w[partner], image_hw, (h, w), tau=tau)
    tokens = et.proj_in(et.norm(x).flatten(2).transpose(1, 2))  # (B*T, hw, C)
    block = et.transformer_blocks[0]
    for attn, norm in zip(block.attention_blocks, block.norms):
        n = norm(tokens)
        update = torch.zeros_like(tokens)
        for s in range(B):
            for t in range(T):
                q, k, v = attn.to_q(n[s * T + t]), attn.to_k(n[(s ^ 1) * T + t]), attn.to_v(n[(s ^ 1) * T + t])
                rows = []
                for head in range(attn.heads):
                    sl = slice(head * attn.dim_head, (head + 1) * attn.dim_head)
                    logits = (q[:, sl] @ k[:, sl].T / math.sqrt(attn.dim_head)).masked_fill(~masks[s, t], -math.inf)
                    rows.append(torch.softmax(logits, dim=-1).nan_to_num(0.0) @ v[:, sl])  # empty band -> 0
                update[s * T + t] = attn.to_out[0](torch.cat(rows, dim=-1))
        tokens = tokens + update
    tokens = tokens + block.ff(block.ff_norm(tokens))
    return x + et.proj_out(tokens).transpose(1, 2).reshape(BT, C, h, w)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_masked_epi_module_matches_reference(path):
    torch.manual_seed(0)
    batch = pair_batch(P=1, seed=3)
    camera = CameraInputs(K=batch["K"].double(), c2w=batch["c2w"].double(), image_hw=(HW, HW), num_views=2)
    unet = build_unet("tiny")
    sync = install_cvd_modules(unet, tau=3.0, path=path)
    module = sync.modules[0].double()
    torch.nn.init.normal_(module.epi_transformer.proj_out.weight, std=0.3)
    x = torch.randn(2 * T, 32, 8, 8, dtype=torch.float64)
    with sync.bind(camera, 2, T) as ctx:
        got = sync.run(module, x)
        mask = ctx.mask("cross", (8, 8))
    want = reference_epi_module(x, module, camera.K, camera.c2w, (HW, HW), 3.0)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert 0 < float(mask.float().mean()) < 0.5, "the band must select a strict subset of the partner frame"
    assert not torch.allclose(got, x)


def test_cvd_needs_pairs(cvd):
    batch = pair_batch(P=1)
    with pytest.raises(ValueError, match="num_views"):
        cvd.conditions(dict(batch, num_views=1))
    z = cvd.encode_video(batch["video"])
    cond = cvd.conditions(batch, z)
    single = replace(cond, text=cond.text[:1], camera=cond.camera.select(torch.tensor([0])))
    with pytest.raises(ValueError, match="even batch"):
        cvd.denoise(z[:1], torch.tensor([1]), single)
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


def test_training_loss_and_collaborative_sampling_run_on_pairs(cvd):
    from camvid.diffusion.collaborative import sample_collaborative_video
    from camvid.diffusion.losses import diffusion_loss

    model = perturbed(cvd)
    gen = torch.Generator().manual_seed(0)
    losses = diffusion_loss(model, pair_batch(P=1), generator=gen, cond_dropout={"p_text": 0.5})
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and bool((losses["drop_text"][0::2] == losses["drop_text"][1::2]).all())
    four = pair_batch(P=2)  # one scene seen by 4 cameras: M = 4 views, denoised pair by pair
    four["num_views"] = 4
    four["caption"] = ["scene"] * 4
    videos = sample_collaborative_video(model, four, num_videos=4, num_steps=2, strategy="partition",
                                        generator=torch.Generator().manual_seed(0))
    assert videos.shape == (4, T, 3, HW, HW) and torch.isfinite(videos).all()


def test_homography_pairs_band_follows_the_warp(cvd):
    batch = pair_batch(P=1)
    batch["c2w"] = torch.eye(4).repeat(2, T, 1, 1)  # WebVid pairs carry identity cameras
    H = torch.eye(3).repeat(2, T, 1, 1)
    H[1, :, 0, 2] = torch.arange(T) * 4.0  # view b = view a shifted right by 4 px per frame
    H[1, :, 1, 2] = -2.0
    batch["homography"] = H
    camera = CameraInputs(K=batch["K"], c2w=batch["c2w"], image_hw=(HW, HW), num_views=2)
    sync = cvd.sync
    with sync.bind(camera, 2, T, homography=H) as ctx:
        mask = ctx.mask("cross", (8, 8)).view(2, T, 64, 64)
    cell = HW / 8
    for s, sign in ((0, 1.0), (1, -1.0)):  # a -> b follows H, b -> a its inverse
        for t in range(T):
            for q in range(64):
                x = (q % 8 + 0.5) * cell + sign * 4.0 * t
                y = (q // 8 + 0.5) * cell - sign * 2.0
                if 0 <= x < HW and 0 <= y < HW:
                    assert mask[s, t, q, int(y // cell) * 8 + int(x // cell)], (s, t, q)
    assert float(mask.float().mean()) < 0.5
    with torch.no_grad():
        out = run(perturbed(cvd), batch)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="homography must be"), sync.bind(camera, 2, T, homography=H[:1]):
        pass


def test_gradient_checkpointing_keeps_the_injected_modules_exact(cvd):
    """diffusers checkpoints resnets / spatial transformers only: the pose adaptor and epi hooks run
    outside the recomputed regions, so gradients with and without checkpointing agree."""
    model = perturbed(cvd)
    with torch.no_grad():
        for proc, _ in model.pose_adaptor.processors:
            torch.nn.init.normal_(proc.qkv_merge.weight, std=0.1)
    for p in model.pose_encoder.parameters():
        p.requires_grad_(True)
    batch = pair_batch(P=1)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.unet.enable_gradient_checkpointing()
        model.unet.train()
        run(model, batch).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("pose_encoder" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_webvid_pairs_run_without_camera_input(cvd):
    """CVD's WebVid phase (public code: ``pose_embedding=None``): a camera-free batch runs neither the
    pose encoder nor CameraCtrl's merge, so its cameras change nothing and no gradient reaches them,
    while a RealEstate10K batch trains the pose encoder through the merge."""
    from camvid.diffusion.losses import diffusion_loss

    model = perturbed(cvd)
    with torch.no_grad():  # a "trained" CameraCtrl: the zero-initialised merge holds weights
        for proc, _ in model.pose_adaptor.processors:
            torch.nn.init.normal_(proc.qkv_merge.weight, std=0.2)
    for p in [*model.pose_encoder.parameters(), *model.pose_adaptor.parameters()]:
        p.requires_grad_(True)
    calls = []
    model.pose_encoder.register_forward_hook(lambda *_: calls.append(1))

    def grads(batch):
        model.zero_grad(set_to_none=True)
        calls.clear()
        diffusion_loss(model, batch, generator=torch.Generator().manual_seed(0))["loss"].backward()
        enc = [p.grad for p in model.pose_encoder.parameters()]
        merge = [p.grad for p in model.pose_adaptor.parameters()]
        epi = [p.grad for p in model.sync.parameters()]
        return len(calls), enc, merge, epi

    re10k = pair_batch(P=1)
    n, enc, merge, epi = grads(re10k)
    assert n == 1 and all(g is not None for g in enc + merge) and any(float(g.abs().sum()) > 0 for g in enc)

    webvid = pair_batch(P=1)
    H = torch.eye(3).repeat(2, T, 1, 1)
    H[1, :, 0, 2] = torch.arange(T) * 2.0
    webvid.update(c2w=torch.eye(4).repeat(2, T, 1, 1), homography=H, camera_free=torch.ones(2, dtype=torch.bool))
    n, enc, merge, epi = grads(webvid)
    assert n == 0 and all(g is None for g in enc + merge), "the WebVid phase fed the camera encoder"
    assert any(g is not None and float(g.abs().sum()) > 0 for g in epi)  # the sync modules still train

    with torch.no_grad():  # other cameras change nothing: there is no camera input
        moved = dict(webvid, c2w=pair_batch(P=1, seed=3)["c2w"])
        assert torch.equal(run(model, webvid), run(model, moved))
        assert not torch.equal(run(model, re10k), run(model, dict(re10k, c2w=moved["c2w"])))
    with pytest.raises(ValueError, match="mixes camera-free"):
        model.conditions(dict(webvid, camera_free=torch.tensor([True, False])))


def test_homography_pairs_are_marked_camera_free():
    import numpy as np

    from camvid.data.clips import Clip
    from camvid.data.samples import SampleSpec, collate, homography_pair, single_sample

    frames = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    clip = Clip(key="w0", caption="a ball", num_frames=12, track=None, load=lambda idx, out=None: frames[list(idx)],
                source="webvid", where="w0")
    spec = SampleSpec(num_frames=4, height=16, width=16, train=False, stride_max=2)
    batch = collate([homography_pair(clip, spec, np.random.default_rng(0))] * 2)
    assert batch["camera_free"].tolist() == [True] * 4
    assert "camera_free" not in single_sample(clip, spec, np.random.default_rng(0))
