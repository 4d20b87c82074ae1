"""AnimateDiff backbone + CameraCtrl injection: tiny runs on the CPU, full size on ``meta``."""

from __future__ import annotations

import copy

import pytest
import torch

from camvid.models.animatediff import (
    AnimateDiffT2V,
    build_animatediff_method,
    build_unet,
    convert_official_state_dict,
    convert_to_official_state_dict,
    install_pose_adaptor,
    official_to_ours,
    ours_to_official,
)
from camvid.models.manifests import load_manifest

T, HW = 8, 32  # frames, pixels of the tiny test videos (16x16 latents)


def make_batch(B: int = 2, num_views: int = 1, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(B, T, 1, 1)
    c2w[:, :, 0, 3] = torch.linspace(0, 1, T)  # dolly to the right
    c2w[:, :, 2, 3] = torch.rand(B, 1, generator=gen) * torch.linspace(0, 0.5, T)
    K = torch.tensor([[30.0, 0, HW / 2], [0, 30.0, HW / 2], [0, 0, 1]]).repeat(B, T, 1, 1)
    return dict(
        video=torch.rand(B, T, 3, HW, HW, generator=gen) * 2 - 1,
        K=K,
        c2w=c2w,
        caption=[f"a room number {i}" for i in range(B)],
        cond_index=torch.zeros(B, dtype=torch.long),
        num_views=num_views,
    )


@pytest.fixture(scope="module")
def cameractrl() -> AnimateDiffT2V:
    torch.manual_seed(0)
    return build_animatediff_method("cameractrl", "tiny", num_frames=T)


def run(model: AnimateDiffT2V, batch: dict, t=(10, 700), cond=None) -> torch.Tensor:
    z = model.encode_video(batch["video"])
    cond = cond if cond is not None else model.conditions(batch, z)
    return model.denoise(z, torch.tensor(t), cond)


@pytest.mark.parametrize("method", ["animatediff", "cameractrl"])
def test_tiny_forward_backward_trains_only_new_modules(method):
    torch.manual_seed(0)
    model = build_animatediff_method(method, "tiny", num_frames=T)
    assert not model.image_to_video and model.parameterization == "eps"
    batch = make_batch()
    out = run(model, batch)
    assert out.shape == (2, 12, T, HW // 2, HW // 2) and torch.isfinite(out).all()
    out.square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if method == "cameractrl":
        assert trainable == {n for n, _ in model.named_parameters() if n.startswith("pose_encoder.") or "qkv_merge" in n}
    else:
        assert trainable and all(".motion_modules." in n for n in trainable)
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    # qkv_merge starts at zero: its weight still gets a gradient, so CameraCtrl can learn
    if method == "cameractrl":
        merge = [p for n, p in model.named_parameters() if "qkv_merge.weight" in n]
        assert merge and all(float(p.grad.abs().sum()) > 0 for p in merge)


def test_zero_init_pose_adaptor_is_bit_identical_and_merge_matters():
    torch.manual_seed(0)
    plain = build_unet("tiny", in_channels=12, out_channels=12)
    adapted = copy.deepcopy(plain)
    adaptor = install_pose_adaptor(adapted)
    assert len(adaptor.processors) == 2 * 2 + 3 * 2  # every motion module of the 2-level tiny UNet
    z = torch.randn(2, 12, T, 16, 16)
    t = torch.tensor([3, 600])
    text = torch.randn(2, 5, 64).repeat_interleave(T, 0)
    features = [torch.randn(2, c, T, 16 // 2**i, 16 // 2**i) for i, c in enumerate((32, 64))]
    with torch.no_grad():
        ref = plain(z, t, encoder_hidden_states=text).sample
        with adaptor.feed(features, T):
            same = adapted(z, t, encoder_hidden_states=text).sample
        assert torch.equal(ref, same)
        for proc, _ in adaptor.processors:
            torch.nn.init.normal_(proc.qkv_merge.weight, std=0.1)
        with adaptor.feed(features, T, keep=torch.tensor([True, False])):
            mixed = adapted(z, t, encoder_hidden_states=text).sample
        with adaptor.feed(None, T):  # no features: the plain backbone again
            unfed = adapted(z, t, encoder_hidden_states=text).sample
    assert torch.equal(mixed[1], ref[1]), "a camera-dropped sample must see the plain backbone"
    assert not torch.allclose(mixed[0], ref[0], atol=1e-4), "a trained merge must change the output"
    assert torch.equal(unfed, ref)


def test_pose_feature_layout_mismatch_is_reported():
    unet = build_unet("tiny", in_channels=12, out_channels=12)
    adaptor = install_pose_adaptor(unet)
    wrong = [torch.randn(2, 33, T, 16, 16), torch.randn(2, 64, T, 8, 8)]
    with pytest.raises(ValueError, match="matches neither"), adaptor.feed(wrong, T):
        pass
    with pytest.raises(ValueError, match="already has a pose adaptor"):
        install_pose_adaptor(unet)


def test_drop_text_uses_the_empty_caption(cameractrl):
    batch = make_batch()
    z = cameractrl.encode_video(batch["video"])
    cond = cameractrl.conditions(batch, z)
    with torch.no_grad():
        dropped = cameractrl.denoise(z, torch.tensor([5, 5]), cond.with_drops(text=torch.tensor([True, False])))
        empty = cameractrl.conditions(dict(batch, caption=["", batch["caption"][1]]), z)
        ref = cameractrl.denoise(z, torch.tensor([5, 5]), empty)
    assert torch.equal(dropped, ref)


def test_camera_changes_the_output_once_merge_is_trained(cameractrl):
    model = copy.deepcopy(cameractrl)
    with torch.no_grad():
        for proc, _ in model.pose_adaptor.processors:
            torch.nn.init.normal_(proc.qkv_merge.weight, std=0.1)
    batch = make_batch()
    other = dict(batch, c2w=batch["c2w"].clone())
    other["c2w"][:, :, 1, 3] += torch.linspace(0, 1, T)  # a different trajectory
    with torch.no_grad():
        a, b = run(model, batch), run(model, other)
        cond = model.conditions(other)
        dropped = run(model, other, cond=cond.with_drops(camera=torch.tensor([True, True])))
        base = run(cameractrl, batch)  # zero merge: cameras have no effect
    assert not torch.allclose(a, b, atol=1e-5)
    assert torch.equal(dropped, base)


def test_invalid_inputs_raise(cameractrl):
    batch = make_batch()
    with pytest.raises(ValueError, match="num_views"):
        cameractrl.conditions(dict(batch, num_views=2))
    z = torch.randn(1, 12, 33, 4, 4)
    with pytest.raises(ValueError, match="33 frames"):
        cameractrl.denoise(z, torch.tensor([1]), cameractrl.conditions(make_batch(B=1)))


@pytest.mark.parametrize(
    "method,attn,words",
    [("cameractrl", "cross_video", ("attn=cross_video", "model=cameractrl")),
     ("animatediff", "cross_video", ("attn=cross_video", "model=animatediff")),
     ("cvd", "temporal", ("model=cvd", "attn=temporal")),
     ("cvd", "epipolar", ("model=cvd", "attn=epipolar")),
     ("cami2v", "temporal", ("model=cami2v", "attn=temporal")),
     ("cameractrl", "epipolar", ("model=cameractrl", "attn=epipolar")),
     ("svd", None, ("model=svd",))],
)
def test_invalid_combinations_name_both_options(method, attn, words):
    with pytest.raises(ValueError) as err:
        build_animatediff_method(method, "tiny", attn=attn)
    assert all(w in str(err.value) for w in words), str(err.value)


# ----------------------------------------------------------------------------------- full size


@pytest.fixture(scope="module")
def full_cameractrl() -> AnimateDiffT2V:
    return build_animatediff_method("cameractrl", "full", num_frames=16, image_hw=(256, 384), device="meta")


def test_full_size_counts_match_cameractrl(full_cameractrl):
    model = full_cameractrl
    assert sum(p.numel() for p in model.unet.parameters()) == 1_295_620_164
    # the manifest's "motion modules" figure includes the qkv_merge layers inside them
    motion = sum(p.numel() for n, p in model.unet.named_parameters() if ".motion_modules." in n)
    assert motion == 436_099_200
    assert sum(p.numel() for p in model.pose_encoder.parameters()) == 199_262_400
    assert sum(p.numel() for p in model.trainable_parameters()) == 218_224_000


def test_full_unet_matches_the_official_layout_after_mapping(full_cameractrl):
    ours = {k: tuple(v.shape) for k, v in full_cameractrl.unet.state_dict().items()}
    official = convert_to_official_state_dict(full_cameractrl.unet.state_dict())
    manifest = load_manifest("cameractrl-adv3_unet_full")
    assert set(official) == set(manifest)  # strict: every name, nothing extra
    assert all(tuple(official[k].shape) == manifest[k].shape for k in manifest)
    # and back: the official layout renames onto ours exactly
    back = {official_to_ours(k) for k in manifest} - {None}
    assert back == set(ours)
    trainable = {k for k, e in manifest.items() if e.trainable}
    ours_trainable = {n for n, p in full_cameractrl.unet.named_parameters() if p.requires_grad}
    assert {o for n in ours_trainable for o in ours_to_official(n)} == trainable
    processors = load_manifest("cameractrl-adv3_attention_processor_state_dict")
    assert set(processors) == trainable


def test_full_pose_encoder_matches_cameractrl(full_cameractrl):
    sd = full_cameractrl.pose_encoder.state_dict()
    manifest = load_manifest("cameractrl-adv3_pose_encoder_state_dict")
    assert set(sd) == set(manifest)
    assert all(tuple(sd[k].shape) == manifest[k].shape for k in manifest)


def test_key_mapping_round_trips_real_tensors():
    unet = build_unet("tiny")
    install_pose_adaptor(unet)
    ours = unet.state_dict()
    official = convert_to_official_state_dict(ours)
    key = "down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight"
    assert torch.equal(official[key], ours["down_blocks.0.motion_modules.1.transformer_blocks.0.attn2.to_q.weight"])
    assert "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.weight" in official
    back = convert_official_state_dict(official)
    assert list(back) == list(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    unet.load_state_dict(back, strict=True)
    pe1 = "up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    broken = dict(official, **{pe1: official[pe1] + 1})
    with pytest.raises(ValueError, match="positional tables"):
        convert_official_state_dict(broken)


def test_load_official_files_round_trip(tmp_path):
    """Write a tiny CVD's weights in the official file layouts, load them into a fresh model."""
    from safetensors.torch import save_file

    from camvid.models.animatediff.checkpoints import load_animatediff_weights

    torch.manual_seed(1)
    src = build_animatediff_method("cvd", "tiny", num_frames=T)
    with torch.no_grad():
        for p in [*src.unet.parameters(), *src.pose_encoder.parameters()]:
            p.add_(torch.randn_like(p) * 0.01)  # no zero-initialised layer stays trivially equal
    unet_sd = src.unet.state_dict()
    official = convert_to_official_state_dict(unet_sd)
    (tmp_path / "stable-diffusion-v1-5" / "unet").mkdir(parents=True)
    spatial = {k: v.half() for k, v in unet_sd.items() if ".motion_modules." not in k and ".epi_modules." not in k}
    save_file(spatial, str(tmp_path / "stable-diffusion-v1-5" / "unet" / "diffusion_pytorch_model.safetensors"))
    motion = {k: v for k, v in official.items() if ".motion_modules." in k and "qkv_merge" not in k}
    torch.save({"state_dict": motion}, tmp_path / "v3_sd15_mm.ckpt")
    torch.save({"pose_encoder_state_dict": src.pose_encoder.state_dict(),
                "attention_processor_state_dict": {k: v for k, v in official.items() if "qkv_merge" in k}},
               tmp_path / "CameraCtrl.ckpt")
    torch.save({"unet_trainable_dict": {k: v for k, v in official.items() if ".epi_modules." in k and "coords" not in k}},
               tmp_path / "CVD.ckpt")

    torch.manual_seed(2)
    dst = build_animatediff_method("cvd", "tiny", num_frames=T)
    assert load_animatediff_weights(dst, tmp_path) == ["stable-diffusion-v1-5", "v3_sd15_mm.ckpt",
                                                       "CameraCtrl.ckpt", "CVD.ckpt"]
    got = dst.state_dict()
    for k, v in src.state_dict().items():  # the frozen text encoder / first stage are fixed by seed
        tol = 1e-3 * (1 + v.abs().max()) if k.removeprefix("unet.") in spatial else 0  # fp16 file
        assert torch.allclose(got[k].float(), v.float(), atol=float(tol), rtol=0), k

    motion.pop(next(iter(motion)))
    torch.save(motion, tmp_path / "v3_sd15_mm.ckpt")
    with pytest.raises(ValueError, match="v3_sd15_mm.ckpt: 1 missing key"):
        load_animatediff_weights(dst, tmp_path)
    # CVD.ckpt is optional (model=cvd trains from zero-initialised sync modules); CameraCtrl.ckpt is not
    (tmp_path / "CVD.ckpt").unlink()
    (tmp_path / "v3_sd15_mm.ckpt").unlink()
    assert load_animatediff_weights(dst, tmp_path) == ["stable-diffusion-v1-5", "CameraCtrl.ckpt"]
    (tmp_path / "CameraCtrl.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="CameraCtrl.ckpt"):
        load_animatediff_weights(dst, tmp_path)


def test_text_to_video_sampling_needs_no_video():
    from camvid.diffusion.sampler import sample_video

    torch.manual_seed(0)
    model = build_animatediff_method("cameractrl", "tiny", num_frames=T, image_hw=(HW, HW))
    batch = {k: v for k, v in make_batch().items() if k != "video"}
    videos = sample_video(model, batch, num_steps=2, latent_shape=(2, 12, T, HW // 2, HW // 2),
                          generator=torch.Generator().manual_seed(0))
    assert videos.shape == (2, T, 3, HW, HW) and torch.isfinite(videos).all()


# --------------------------------------------- full-size path: meta build materialised by the load

def _full_small(method: str, **kw) -> AnimateDiffT2V:
    """``size="full"`` (the lazy path) at the tiny UNet width, with the tiny encoders."""
    from camvid.models.animatediff.unet import UNET_CONFIGS
    from camvid.models.encoders import HashTextEncoder, PixelShuffleFirstStage

    attn = {"cami2v": "epipolar", "cvd": "cross_video"}.get(method, "temporal")
    return build_animatediff_method(method, "full", attn=attn, num_frames=T, image_hw=(HW, HW),
                                    first_stage=PixelShuffleFirstStage(factor=2), text_encoder=HashTextEncoder(dim=64),
                                    unet_kwargs={k: v for k, v in UNET_CONFIGS["tiny"].items()
                                                 if k not in ("in_channels", "out_channels", "cross_attention_dim")},
                                    **kw)


def _write_official_files(src: AnimateDiffT2V, folder, cvd: bool = False) -> None:
    from safetensors.torch import save_file

    unet_sd = src.unet.state_dict()
    official = convert_to_official_state_dict(unet_sd)
    (folder / "stable-diffusion-v1-5" / "unet").mkdir(parents=True)
    spatial = {k: v.contiguous() for k, v in unet_sd.items() if ".motion_modules." not in k
               and ".epi_modules." not in k and ".cross_frame_modules." not in k}
    save_file(spatial, str(folder / "stable-diffusion-v1-5" / "unet" / "diffusion_pytorch_model.safetensors"))
    torch.save({"state_dict": {k: v for k, v in official.items() if ".motion_modules." in k and "qkv_merge" not in k
                               and "cc_projection" not in k}}, folder / "v3_sd15_mm.ckpt")
    if src.pose_encoder is not None:
        torch.save({"pose_encoder_state_dict": src.pose_encoder.state_dict(),
                    "attention_processor_state_dict": {k: v for k, v in official.items() if "qkv_merge" in k}},
                   folder / "CameraCtrl.ckpt")
    if cvd:
        torch.save({"unet_trainable_dict": {k: v for k, v in official.items()
                                            if ".epi_modules." in k and "coords" not in k}}, folder / "CVD.ckpt")


@pytest.mark.parametrize("method,base", [("cvd", "cameractrl"), ("motionctrl", "animatediff"),
                                         ("cami2v", "cameractrl")])
def test_full_size_build_on_meta_materialises_and_new_modules_keep_their_init(tmp_path, method, base):
    from camvid.models.animatediff.builder import meta_tensors

    torch.manual_seed(3)
    src = _full_small(base)
    with torch.no_grad():
        for p in [*src.unet.parameters(), *(src.pose_encoder.parameters() if src.pose_encoder else [])]:
            p.add_(torch.randn_like(p) * 0.02)  # no zero-initialised layer stays trivially equal
    _write_official_files(src, tmp_path)

    torch.manual_seed(4)
    lazy = _full_small(method, pretrained=tmp_path)
    assert meta_tensors(lazy) == []
    torch.manual_seed(5)
    eager = _full_small(method)  # random trunk, then filled from the same files
    eager.load_pretrained(tmp_path)
    new = {"cvd": ".epi_modules.", "motionctrl": "cc_projection", "cami2v": ".cross_frame_modules."}[method]
    assert any(new in k for k in lazy.state_dict())
    loaded = ("unet.", "pose_encoder.")
    for key, value in src.state_dict().items():  # every loaded part equals the files
        if key.startswith(loaded):
            torch.testing.assert_close(lazy.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # the modules no file holds carry their documented initialisation (zero output layer / [I | 0])
    zero = {"cvd": ".epi_transformer.proj_out.", "cami2v": ".to_out.0.", "motionctrl": "cc_projection.bias"}[method]
    zeros = [p for k, p in lazy.named_parameters() if new in k and zero in k]
    assert zeros and all(not p.is_meta and float(p.detach().abs().sum()) == 0 for p in zeros)
    if method == "motionctrl":
        for proc in lazy.motionctrl.processors:
            w, c = proc.cc_projection.weight, proc.cc_projection.weight.shape[0]
            assert torch.equal(w, torch.cat([torch.eye(c), torch.zeros(c, 12)], dim=1))
    else:  # the rest of their weights is random, not empty memory
        others = [p for k, p in lazy.named_parameters() if new in k and k.endswith("weight") and zero not in k]
        assert others and all(torch.isfinite(p).all() and p.std() > 0 for p in others if p.dim() > 1)

    batch = make_batch(B=2, num_views=2 if method == "cvd" else 1)
    with torch.no_grad():
        z = lazy.encode_video(batch["video"])
        cond, t = lazy.conditions(batch, z), torch.tensor((10, 700))
        out_lazy, out_eager = lazy.eval().denoise(z, t, cond), eager.eval().denoise(z, t, cond)
        # zero-initialised outputs: the method equals its base loaded from the same files
        out_base = src.eval().denoise(z, t, cond)
    torch.testing.assert_close(out_lazy, out_eager)
    torch.testing.assert_close(out_lazy, out_base)


def test_full_size_build_names_missing_weights_before_and_after(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        _full_small("cameractrl", pretrained=tmp_path / "absent")
    torch.manual_seed(0)
    _write_official_files(_full_small("cameractrl"), tmp_path)
    (tmp_path / "v3_sd15_mm.ckpt").unlink()
    (tmp_path / "CameraCtrl.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match=r"needs v3_sd15_mm.ckpt \(huggingface.co/guoyww/animatediff\), "
                                                r"CameraCtrl.ckpt \(huggingface.co/hehao13/CameraCtrl\) in that folder"):
        _full_small("cameractrl", pretrained=tmp_path)
    # the SD1.5 encoders are needed too when the model's own (full-size) encoders are to be filled
    with pytest.raises(FileNotFoundError, match=r"stable-diffusion-v1-5/vae/ \(huggingface.co/stable-diffusion-v1-5"):
        build_animatediff_method("animatediff", "full", pretrained=tmp_path)


@pytest.mark.parametrize("method", ["cvd", "motionctrl", "cami2v"])
def test_full_size_meta_dry_run_allocates_nothing(method):
    attn = {"cami2v": "epipolar", "cvd": "cross_video"}.get(method, "temporal")
    model = build_animatediff_method(method, "full", attn=attn, device="meta")
    real = [n for n, p in model.named_parameters() if not p.is_meta]
    assert real == [] and sum(p.numel() for p in model.parameters()) > 1_000_000_000


def _cvd_file(path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"unet_trainable_dict": state}, path)


@pytest.mark.parametrize("where", ["method_ckpt", "folder"])
def test_cvd_ckpt_fills_sync_modules_built_on_meta(tmp_path, monkeypatch, where):
    """CVD.ckpt given (method_ckpt= or in the weights folder): the sync modules are built with meta
    parameters and materialised by its strict load, as every other loaded part."""
    from camvid.models.animatediff import checkpoints
    from camvid.models.animatediff.builder import meta_tensors

    torch.manual_seed(3)
    src = _full_small("cvd")
    with torch.no_grad():
        for p in [*src.unet.parameters(), *src.pose_encoder.parameters()]:
            p.add_(torch.randn_like(p) * 0.02)  # the epi modules' zero output layers included
    _write_official_files(src, tmp_path / "base", cvd=where == "folder")
    epi = {k: v for k, v in convert_to_official_state_dict(src.unet.state_dict()).items()
           if ".epi_modules." in k and "coords" not in k}
    if where == "method_ckpt":
        _cvd_file(tmp_path / "released" / "CVD.ckpt", epi)
    seen = []
    load_cvd = checkpoints.load_cvd
    monkeypatch.setattr(checkpoints, "load_cvd", lambda model, path: (
        seen.append(sorted({p.device.type for p in model.sync.parameters()})), load_cvd(model, path))[1])
    kw = {"method_ckpt": tmp_path / "released" / "CVD.ckpt"} if where == "method_ckpt" else {}
    model = _full_small("cvd", pretrained=tmp_path / "base", **kw)
    assert seen == [["meta"]]  # nothing allocated for them before the file was read
    assert meta_tensors(model) == []
    for key, value in src.state_dict().items():
        if key.startswith(("unet.", "pose_encoder.")):
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert any(".epi_modules." in k for k in model.state_dict())
    if where == "folder":
        return  # the same load as method_ckpt=; the output check below runs once
    batch = make_batch(B=2, num_views=2)
    with torch.no_grad():
        z = model.encode_video(batch["video"])
        cond, t = model.conditions(batch, z), torch.tensor((10, 700))
        torch.testing.assert_close(model.eval().denoise(z, t, cond), src.eval().denoise(z, t, cond))


def test_cvd_ckpt_load_is_strict_and_wrong_kinds_fail_before_building(tmp_path, monkeypatch):
    from camvid.models.animatediff import builder

    torch.manual_seed(0)
    src = _full_small("cvd")
    _write_official_files(src, tmp_path / "base")
    epi = {k: v for k, v in convert_to_official_state_dict(src.unet.state_dict()).items()
           if ".epi_modules." in k and "coords" not in k}
    first = sorted(epi)[0]
    bad = {k: v for k, v in epi.items() if k != first} | {"down_blocks.0.epi_modules.0.extra.weight": epi[first]}
    _cvd_file(tmp_path / "bad" / "CVD.ckpt", bad)
    with pytest.raises(ValueError, match=rf"CVD.ckpt \[unet_trainable_dict\]: 1 missing key\(s\) \['{first}'\], "
                                         r"1 unexpected key\(s\) \['down_blocks.0.epi_modules.0.extra.weight'\]"):
        _full_small("cvd", pretrained=tmp_path / "base", method_ckpt=tmp_path / "bad" / "CVD.ckpt")

    # wrong-kind files are named from their keys before anything is built
    monkeypatch.setattr(builder, "build_unet", lambda *a, **k: pytest.fail("built before checking the files"))
    with pytest.raises(ValueError, match="CVD.ckpt but model=cameractrl has no CVD sync modules; use model=cvd"):
        build_animatediff_method("cameractrl", "full", pretrained=tmp_path / "base",
                                 method_ckpt=tmp_path / "bad" / "CVD.ckpt")
    with pytest.raises(ValueError, match="CameraCtrl.ckpt but model=animatediff has no CameraCtrl modules"):
        build_animatediff_method("animatediff", "full", pretrained=tmp_path / "base",
                                 method_ckpt=tmp_path / "base" / "CameraCtrl.ckpt")
    with pytest.raises(ValueError, match=r"v3_sd15_mm.ckpt: not an AnimateDiff method file; it has keys \['state_dict'\]"):
        build_animatediff_method("cvd", "full", attn="cross_video", pretrained=tmp_path / "base",
                                 method_ckpt=tmp_path / "base" / "v3_sd15_mm.ckpt")
    with pytest.raises(FileNotFoundError, match=r"a file: the AnimateDiff family's pretrained= is a folder.*"
                                                r"huggingface.co/guoyww/animatediff"):
        build_animatediff_method("cvd", "full", attn="cross_video", pretrained=tmp_path / "base" / "CameraCtrl.ckpt")
