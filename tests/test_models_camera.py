"""Camera conditioning on DynamiCrafter: official layouts and trainable sets on the meta device,
pose encoder, zero-initialised injection, gradients, null cameras."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from camvid.models.camera.pose_encoder import CameraPoseEncoder
from camvid.models.dynamicrafter.builder import build_dynamicrafter_method
from camvid.models.encoders import AutoencoderKLFirstStage, HashTextEncoder, TinyImageEncoder
from camvid.models.manifests import load_manifest

HAS_ATTENTION = importlib.util.find_spec("camvid.attention") is not None and hasattr(
    importlib.import_module("camvid.attention"), "build_cross_frame_attention")
needs_attention = pytest.mark.skipif(not HAS_ATTENTION, reason="camvid.attention.build_cross_frame_attention missing")


def _full_size(method: str, attn: str | None = None, size: str = "256"):
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4)
        first_stage = AutoencoderKLFirstStage(vae=vae)
        text, image = HashTextEncoder(dim=1024), TinyImageEncoder(dim=1280)
    model = build_dynamicrafter_method(method, size, attn, first_stage=first_stage, text_encoder=text,
                                       image_encoder=image, device="meta")
    assert all(p.is_meta for p in model.parameters())
    return model


def _trainable(model) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def _manifest_trainable(name: str) -> dict[str, tuple[int, ...]]:
    return {k: e.shape for k, e in load_manifest(name).items() if e.trainable}


def test_pose_encoder_matches_official_layout():
    with torch.device("meta"):
        enc = CameraPoseEncoder()
    ours = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    for name, prefix in [("cameractrl-adv3_pose_encoder_state_dict", None), ("cami2v_256x256", "pose_encoder.")]:
        assert ours == {k: e.shape for k, e in load_manifest(name, prefix).items()}
    assert sum(p.numel() for p in enc.parameters()) == 199_262_400


def test_pose_encoder_levels_and_errors():
    enc = CameraPoseEncoder(downscale_factor=4, channels=(32, 64, 64), temporal_attention_nhead=4,
                            temporal_position_encoding_max_len=5)
    feats = enc(torch.randn(2, 5, 6, 32, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 5, 8, 12), (2, 64, 5, 4, 6), (2, 64, 5, 2, 3)]
    with pytest.raises(ValueError, match="max_len"):
        enc(torch.randn(1, 6, 6, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, T, 6, H, W\)"):
        enc(torch.randn(1, 6, 5, 32, 32))


def test_pose_encoder_fourier_channels():
    """fourier_bands=F gives conv_in 6 (1 + 2F) channels per pixel: the rays, sin, cos of 2^k pi x;
    0 (the released layout) leaves the rays as they are."""
    plain = CameraPoseEncoder(downscale_factor=4, channels=(32, 64), temporal_attention_nhead=4,
                              temporal_position_encoding_max_len=8)
    assert plain.encoder_conv_in.in_channels == 6 * 16
    rays = torch.rand(1, 2, 6, 8, 8) * 2 - 1
    assert torch.equal(plain.fourier(rays), rays)
    enc = CameraPoseEncoder(downscale_factor=4, channels=(32, 64), temporal_attention_nhead=4,
                            temporal_position_encoding_max_len=8, fourier_bands=3)
    assert enc.encoder_conv_in.in_channels == 6 * 7 * 16
    out = enc.fourier(rays)
    assert out.shape == (1, 2, 42, 8, 8) and torch.equal(out[:, :, :6], rays)
    c, k = 4, 2  # channel 4 at frequency 2^2 pi: sin at 6 + 4*3 + 2, cos 18 further on
    assert torch.allclose(out[:, :, 6 + c * 3 + k], torch.sin(4 * torch.pi * rays[:, :, c]), atol=1e-6)
    assert torch.allclose(out[:, :, 24 + c * 3 + k], torch.cos(4 * torch.pi * rays[:, :, c]), atol=1e-6)
    assert [f.shape for f in enc(torch.rand(1, 8, 6, 32, 32))] == [(1, 32, 8, 8, 8), (1, 64, 8, 4, 4)]
    with pytest.raises(ValueError, match="fourier_bands"):
        CameraPoseEncoder(downscale_factor=4, channels=(32,), fourier_bands=-1)

@pytest.mark.parametrize("method,manifest,count", [
    ("motionctrl", "cami2v-repo_motionctrl_256x256", 63_444_608),
    ("cameractrl", "cami2v-repo_cameractrl_256x256", 211_665_280),
    pytest.param("cami2v", "cami2v_256x256", 261_289_280, marks=needs_attention),
])
def test_trainable_sets_match_official(method, manifest, count):
    model = _full_size(method)
    ours, ref = _trainable(model), _manifest_trainable(manifest)
    assert sorted(set(ours) ^ set(ref)) == []
    assert ours == ref
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    # the camera model's UNet + pose encoder layout equals the official one, frozen parts included
    full = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k.startswith(("model.diffusion_model.", "pose_encoder.", "image_proj_model."))}
    ref_full = {k: e.shape for k, e in load_manifest(manifest).items()
                if k.startswith(("model.diffusion_model.", "pose_encoder.", "image_proj_model."))}
    assert full == ref_full


@needs_attention
def test_cami2v_512_layout():
    model = _full_size("cami2v", size="512")
    ref = {k: e.shape for k, e in load_manifest("cami2v_512x320").items()
           if k.startswith(("model.diffusion_model.", "pose_encoder."))}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k.startswith(("model.diffusion_model.", "pose_encoder."))}
    assert ours == ref


def test_full_dynamicrafter_trains_unet_and_projector():
    model = _full_size("dynamicrafter")
    assert _trainable(model) == _manifest_trainable("dynamicrafter_256x256")


def _batch(b=2, t=4, h=16, w=16):
    g = torch.Generator().manual_seed(1)
    K = torch.tensor([[float(w), 0, w / 2], [0, float(w), h / 2], [0, 0, 1]]).expand(b, t, 3, 3).clone()
    c2w = torch.eye(4).expand(b, t, 4, 4).clone()
    c2w[:, :, 0, 3] = torch.linspace(0, 0.5, t)
    c2w[1, :, 2, 3] = torch.linspace(0, -0.3, t)
    return dict(video=torch.rand(b, t, 3, h, w, generator=g) * 2 - 1, K=K, c2w=c2w,
                cond_index=torch.tensor([0, 0])[:b], frame_stride=torch.tensor([2, 5])[:b],
                caption=["a room", "a hall"][:b], num_views=1)


TINY_VARIANTS = [("motionctrl", "temporal"), ("cameractrl", "temporal"), ("cami2v", "temporal")] + [
    pytest.param("cami2v", a, marks=needs_attention) for a in ("full3d", "epipolar_ref", "epipolar")]


def _tiny(method, attn, seed=0):
    torch.manual_seed(seed)
    return build_dynamicrafter_method(method, "tiny", attn, num_frames=4,
                                      unet_overrides=dict(attention_resolutions=(1, 2)))


def _perturb(model, names=("",), scale=0.05, seed=3):
    """Stand-in for pretrained weights: a fresh UNet's zero-initialised output layers (``out``,
    ``proj_out``, ``conv4``) would make every output and gradient trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in names):
                p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("method,attn", TINY_VARIANTS)
def test_zero_init_camera_modules_leave_base_output_unchanged(method, attn):
    base = _tiny("dynamicrafter", "temporal").eval()
    _perturb(base)
    cam = _tiny(method, attn).eval()
    missing, unexpected = cam.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected
    assert all(("projection" in k or "epipolar" in k or k.startswith("pose_encoder.")) for k in missing)
    batch = _batch()
    z = base.encode_video(batch["video"])
    noise, t = torch.randn_like(z), torch.tensor([10, 700])
    with torch.no_grad():
        ref = base.denoise(noise, t, base.conditions(batch, z))
        out = cam.denoise(noise, t, cam.conditions(batch, z))
    assert ref.abs().mean() > 1e-3
    # equal up to float rounding: a camera block can hand the same values to a layer in another memory
    # layout, and on some CPUs the GEMM kernel then sums in another order (seen: 1.7e-6 at most on one
    # Xeon, bit-equal on another); camera modules with non-zero weights change it far beyond that
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)
    _perturb(cam, names=("projection", "epipolar", "pose_encoder", "cc_projection"))
    with torch.no_grad():
        moved = cam.denoise(noise, t, cam.conditions(batch, z))
    assert (moved - ref).abs().max() > 1e-3


@pytest.mark.parametrize("method,attn", TINY_VARIANTS)
def test_tiny_forward_backward_grads_only_on_trainable(method, attn):
    model = _tiny(method, attn)
    _perturb(model)
    batch = _batch()
    z = model.encode_video(batch["video"])
    cond = model.conditions(batch, z).with_drops(camera=torch.tensor([True, False]))
    out = model.denoise(torch.randn_like(z), torch.tensor([10, 700]), cond)
    assert out.shape == z.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    if method != "motionctrl":
        assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("pose_encoder."))


@pytest.mark.parametrize("method", ["motionctrl", "cameractrl", "cami2v"])
def test_camera_changes_output_and_null_camera_equals_zero_camera(method):
    model = _tiny(method, "temporal").eval()
    _perturb(model)
    batch = _batch()
    z = model.encode_video(batch["video"])
    noise, t = torch.randn_like(z), torch.tensor([400, 400])
    with torch.no_grad():
        cond = model.conditions(batch, z)
        out = model.denoise(noise, t, cond)
        other = dict(batch, c2w=batch["c2w"].flip(1))
        assert (model.denoise(noise, t, model.conditions(other, z)) - out).abs().max() > 1e-5
        dropped = model.denoise(noise, t, cond.with_drops(camera=torch.tensor([True, False])))
        torch.testing.assert_close(dropped[1], out[1])
        assert (dropped[0] - out[0]).abs().max() > 1e-5
        # the null camera is the zero camera: zero [R|t] for MotionCtrl, zero Plücker otherwise
        uc = model._unet_camera(cond.camera, torch.tensor([True, True]), noise)
        if method == "motionctrl":
            assert uc.rt.eq(0).all()
        else:
            zero = model.pose_encoder(torch.zeros(2, 4, 6, 16, 16))
            for a, b in zip(uc.pose_features, zero):
                torch.testing.assert_close(a, b)


def test_camera_method_input_errors():
    model = _tiny("cameractrl", "temporal")
    batch = _batch()
    z = model.encode_video(batch["video"])
    with pytest.raises(ValueError, match="needs batch\\['K'\\]"):
        model.conditions({k: v for k, v in batch.items() if k != "K"}, z)
    cond = model.conditions(batch, z)
    with pytest.raises(ValueError, match="frames"):
        model.denoise(torch.randn(2, 48, 3, 4, 4), torch.tensor([1, 1]), cond)
    with pytest.raises(ValueError, match="cannot be used with a DynamiCrafter"):
        build_dynamicrafter_method("cami2v", "tiny", "cross_video", num_frames=4)


@needs_attention
def test_null_camera_attention_context_is_unconstrained():
    from camvid.models.base import CameraInputs
    from camvid.models.camera.context import build_attention_context

    batch = _batch()
    cams = CameraInputs(K=batch["K"], c2w=batch["c2w"], image_hw=(16, 16), cond_index=batch["cond_index"])
    plain = build_attention_context("epipolar", cams, None)
    dropped = build_attention_context("epipolar", cams, torch.tensor([True, False]))
    geometric, mixed = plain.mask("all", (4, 4)), dropped.mask("all", (4, 4))
    assert not geometric[0].all()  # the cameras move: the epipolar mask does restrict attention
    assert mixed[0].all()
    assert torch.equal(mixed[1], geometric[1])
    with pytest.raises(ValueError, match="unknown attention option"):
        build_attention_context("epipolar", cams, None, {"bogus": 1})


def test_cami2v_add_into_temporal_attn_and_gradient_checkpointing():
    torch.manual_seed(0)
    kw = dict(num_frames=4, unet_overrides=dict(attention_resolutions=(1, 2)))
    plain = build_dynamicrafter_method("cami2v", "tiny", "temporal", cami2v_add_type="add_into_temporal_attn", **kw)
    _perturb(plain)
    ckpt = build_dynamicrafter_method("cami2v", "tiny", "temporal", cami2v_add_type="add_into_temporal_attn",
                                      gradient_checkpointing=True, **kw)
    ckpt.load_state_dict(plain.state_dict())
    batch = _batch()
    z = plain.encode_video(batch["video"])
    noise, t = torch.randn_like(z), torch.tensor([10, 700])
    grads = []
    for model in (plain, ckpt):
        for m in model.modules():  # training mode (checkpointing is on) without dropout noise
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model.train()
        out = model.denoise(noise, t, model.conditions(batch, z))
        out.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    with pytest.raises(ValueError, match="add_type"):
        build_dynamicrafter_method("cami2v", "tiny", "temporal", cami2v_add_type="sideways", num_frames=4)
