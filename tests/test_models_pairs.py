"""Method x backbone pairs added by issue 7: each trains two steps and samples at tiny size."""

from __future__ import annotations

import pytest
import torch

from camvid.config import ConfigError, check_combination
from camvid.evaluation.layout import read_samples
from camvid.sampling import run_sampling
from camvid.training.loop import train
from conftest import compose, data_overrides, load_benchmark, run_overrides

PAIRS = [("animatediff", "animatediff"),
         pytest.param("motionctrl", "animatediff", marks=pytest.mark.slow),  # ~1-2 min each on a busy CPU
         pytest.param("cami2v", "animatediff", marks=pytest.mark.slow),
         pytest.param("cvd", "dynamicrafter", marks=pytest.mark.slow)]


@pytest.mark.parametrize("model,family", PAIRS)
def test_new_pair_trains_two_steps_and_samples(model, family, data_root, tmp_path):
    cfg = compose(run_overrides(data_root, tmp_path, f"model={model}", f"backbone=tiny_{family}",
                                *data_overrides(model, data_root)))
    summary = train(cfg)
    assert summary["step"] == 2 and torch.isfinite(torch.tensor(summary["loss"]))
    image = sorted((data_root / "train" / "frames").glob("*/00000.png"))[0]
    trajectory = "trajectory=[orbit,pan]" if cfg.model.views > 1 else "trajectory=orbit"
    sample_cfg = compose(["steps=2", f"run_dir={tmp_path}", f"image={image}", "caption=a room", trajectory,
                          f"out_dir={tmp_path / 'samples'}"], config_name="sample")
    folders = run_sampling(sample_cfg)
    records = read_samples(tmp_path / "samples")
    assert len(folders) == len(records) == int(cfg.model.views)
    for record in records:
        video = record.load_video()
        assert video.shape == (8, 32, 32, 3) and video.std() > 0
        assert record.meta["method"] == model


def test_animatediff_baseline_is_checked_against_its_family():
    cfg = compose(["model=animatediff", "backbone=tiny_animatediff"])
    check_combination(cfg)
    assert cfg.model.camera is None and cfg.attn.name == "temporal"
    with pytest.raises(ConfigError, match="model=animatediff does not run on backbone=tiny_dynamicrafter"):
        check_combination(compose(["model=animatediff", "backbone=tiny_dynamicrafter"]))


def test_cvd_checkpoint_is_optional_over_the_cameractrl_base(tmp_path):
    """model=cvd trains from zero-initialised sync modules: a weights folder without CVD.ckpt loads
    (CameraCtrl.ckpt is still required: the sync modules sit on a frozen CameraCtrl)."""
    from camvid.models.animatediff import build_animatediff_method
    from camvid.models.animatediff.checkpoints import load_animatediff_weights
    from camvid.models.animatediff.key_mapping import convert_to_official_state_dict

    model = build_animatediff_method("cvd", "tiny", num_frames=8, image_hw=(32, 32))
    poses = {k: v.clone() for k, v in model.pose_encoder.state_dict().items()}
    merge = convert_to_official_state_dict({k: v for k, v in model.unet.state_dict().items() if ".qkv_merge." in k})
    torch.save({"pose_encoder_state_dict": poses, "attention_processor_state_dict": merge}, tmp_path / "CameraCtrl.ckpt")
    assert load_animatediff_weights(model, tmp_path) == ["CameraCtrl.ckpt"]
    assert all(p.eq(0).all() for n, p in model.unet.named_parameters() if ".epi_modules." in n and "proj_out" in n)


def test_motionctrl_on_animatediff_starts_as_the_backbone_and_reads_cameras():
    from camvid.models.animatediff import build_animatediff_method
    from camvid.models.base import CameraInputs, Conditions

    torch.manual_seed(0)
    base = build_animatediff_method("animatediff", "tiny", num_frames=4, image_hw=(16, 16))
    with torch.no_grad():  # the tiny motion modules' zero-initialised outputs would hide everything
        for name, p in base.unet.named_parameters():
            if "motion_modules" in name and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    ctrl = build_animatediff_method("motionctrl", "tiny", num_frames=4, image_hw=(16, 16))
    missing, unexpected = ctrl.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(".cc_projection." in k for k in missing) and missing
    trainable = {n for n, p in ctrl.named_parameters() if p.requires_grad}
    assert trainable and all(".cc_projection." in n or ".attn2." in n for n in trainable)

    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2, 12, 4, 8, 8, generator=gen)
    c2w = torch.eye(4).expand(2, 4, 4, 4).clone()
    c2w[:, :, 0, 3] = torch.linspace(0, 1, 4)
    cam = CameraInputs(K=torch.eye(3).expand(2, 4, 3, 3).clone(), c2w=c2w, image_hw=(16, 16))
    cond = Conditions(text=base.text_encoder(["a room", "a room"]), camera=cam)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        ref = base.denoise(z, t, Conditions(text=cond.text))
        out = ctrl.denoise(z, t, cond)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # [I | 0]: the backbone
        for proc in ctrl.motionctrl.processors:
            proc.cc_projection.weight.normal_(0, 0.05)
        moved = ctrl.denoise(z, t, cond)
        still = ctrl.denoise(z, t, Conditions(text=cond.text, camera=CameraInputs(
            K=cam.K, c2w=torch.eye(4).expand(2, 4, 4, 4).clone(), image_hw=(16, 16))))
    assert not torch.allclose(moved, still, atol=1e-4), "the camera must change the output"


def test_cami2v_on_animatediff_starts_as_cameractrl_and_sees_the_masks():
    from camvid.models.animatediff import build_animatediff_method
    from camvid.models.base import CameraInputs, Conditions

    torch.manual_seed(0)
    ctrl = build_animatediff_method("cameractrl", "tiny", num_frames=4, image_hw=(16, 16))
    ours = build_animatediff_method("cami2v", "tiny", num_frames=4, image_hw=(16, 16))
    missing, unexpected = ours.load_state_dict(ctrl.state_dict(), strict=False)
    assert not unexpected and missing and all(".cross_frame_modules." in k for k in missing)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert any(".cross_frame_modules." in n for n in trainable) and any("pose_encoder" in n for n in trainable)
    c2w = torch.eye(4).expand(2, 4, 4, 4).clone()
    c2w[:, :, 0, 3] = torch.linspace(0, 1, 4)
    K = torch.tensor([[16.0, 0, 8], [0, 16, 8], [0, 0, 1]]).expand(2, 4, 3, 3).clone()
    cond = Conditions(text=ctrl.text_encoder(["a", "b"]), camera=CameraInputs(K=K, c2w=c2w, image_hw=(16, 16)))
    z = torch.randn(2, 12, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([300, 700])
    with torch.no_grad():
        torch.testing.assert_close(ours.denoise(z, t, cond), ctrl.denoise(z, t, cond))
    with pytest.raises(ValueError, match="model=cameractrl has no cross-frame camera module for attn=epipolar"):
        build_animatediff_method("cameractrl", "tiny", attn="epipolar")
    check_combination(compose(["model=cami2v", "backbone=tiny_animatediff", "attn=epipolar"]))


@pytest.mark.parametrize("model,random", [("cami2v", True), ("motionctrl", False), ("cameractrl", False)])
def test_conditioning_frame_follows_the_model_config(model, random, data_root, tmp_path):
    """rand_cond_frame: CamI2V trains on a random conditioning frame, MotionCtrl / CameraCtrl on frame 0
    (the released CamI2V-repo configs)."""
    from camvid.training.data import build_train_loader

    cfg = compose(run_overrides(data_root, tmp_path, f"model={model}", "backbone=tiny_dynamicrafter",
                                "data=synthetic", "trainer.batch_size=4"))
    assert cfg.model.rand_cond_frame is random
    loader = iter(build_train_loader(cfg, rank=0, world_size=1))
    cond = torch.cat([next(loader)["cond_index"] for _ in range(3)])
    assert bool((cond != 0).any()) is random


def test_cvd_on_dynamicrafter_starts_as_cameractrl_and_couples_the_pair():
    from camvid.models.dynamicrafter import build_dynamicrafter_method

    torch.manual_seed(0)
    ctrl = build_dynamicrafter_method("cameractrl", "tiny", num_frames=4)
    with torch.no_grad():  # a random base has zero-initialised output layers that would hide everything
        for p in ctrl.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    cvd = build_dynamicrafter_method("cvd", "tiny", num_frames=4)
    missing, unexpected = cvd.load_state_dict(ctrl.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("model.diffusion_model.epi_modules.") for k in missing)
    ctrl.eval(), cvd.eval()  # the temporal convolutions have dropout
    assert {n.split(".")[2] for n, p in cvd.named_parameters() if p.requires_grad} == {"epi_modules"}
    gen = torch.Generator().manual_seed(2)
    c2w = torch.eye(4).expand(2, 4, 4, 4).clone()
    c2w[0, :, 0, 3] = torch.linspace(0, 0.5, 4)
    c2w[1, :, 1, 3] = torch.linspace(0, 0.5, 4)
    K = torch.tensor([[60.0, 0, 32], [0, 60, 32], [0, 0, 1]]).expand(2, 4, 3, 3).clone()
    batch = {"video": torch.rand(2, 4, 3, 64, 64, generator=gen) * 2 - 1, "K": K, "c2w": c2w,
             "caption": ["a room"] * 2, "frame_stride": torch.tensor([8, 8]), "num_views": 2}
    z = torch.randn(2, 48, 4, 16, 16, generator=gen)
    t = torch.tensor([400, 400])
    with torch.no_grad():
        single = {**batch, "num_views": 1}
        ref = ctrl.denoise(z, t, ctrl.conditions(single))
        assert ref.abs().mean() > 1e-3
        torch.testing.assert_close(cvd.denoise(z, t, cvd.conditions(batch)), ref)
        for epi in cvd.unet.epi_modules:  # open the zero-initialised outputs: the partner now matters
            for p in epi.parameters():
                if p.abs().sum() == 0 and p.ndim == 2:
                    p.normal_(0, 0.05)
        out = cvd.denoise(z, t, cvd.conditions(batch))
        z2 = z.clone()
        z2[1] = torch.randn(48, 4, 16, 16, generator=gen)
        out2 = cvd.denoise(z2, t, cvd.conditions(batch))
    assert not torch.allclose(out[0], out2[0], atol=1e-5), "video a must see its partner"
    with pytest.raises(ValueError, match="num_views=2"):
        cvd.conditions({**batch, "num_views": 1})
    # CVD's WebVid phase: a camera-free (homography) pair runs without the pose encoder, its cameras
    # change nothing, while the cross-video modules still couple the pair
    calls = []
    hook = cvd.pose_encoder.register_forward_hook(lambda *_: calls.append(1))
    H = torch.eye(3).repeat(2, 4, 1, 1)
    H[1, :, 0, 2] = torch.arange(4) * 2.0
    webvid = {**batch, "homography": H, "camera_free": torch.ones(2, dtype=torch.bool)}
    with torch.no_grad():
        cvd.denoise(z, t, cvd.conditions(batch))
        assert calls, "the hook sees the pose encoder of a RealEstate10K pair"
        calls.clear()
        free = cvd.denoise(z, t, cvd.conditions(webvid))
        moved = cvd.denoise(z, t, cvd.conditions({**webvid, "c2w": c2w.flip(0)}))
        coupled = cvd.denoise(z2, t, cvd.conditions(webvid))
    hook.remove()
    assert not calls and torch.equal(free, moved)
    assert not torch.allclose(free[0], coupled[0], atol=1e-5)


def test_parameter_table_lists_every_pair_check_combination_allows():
    """``benchmarks/backbone.py params`` prints every model x backbone that runs."""
    from pathlib import Path

    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1]
    bench = load_benchmark("backbone")
    def model_cfg(path: Path):
        """A model config merged over the sibling model config its defaults name (the SparseCtrl rows)."""
        cfg = OmegaConf.load(path)
        for entry in cfg.get("defaults", []):
            if isinstance(entry, str) and (path.parent / f"{entry}.yaml").is_file():
                cfg = OmegaConf.merge(model_cfg(path.parent / f"{entry}.yaml"), cfg)
        return cfg

    models = {m.stem: model_cfg(m) for m in (root / "conf" / "model").glob("*.yaml")}
    # the table counts the models camvid builds; sampling-only baselines are released diffusers systems
    built = {name: cfg for name, cfg in models.items() if not cfg.get("sampling_only")}
    assert len(built) < len(models)
    for backbone in sorted((root / "conf" / "backbone").glob("*.yaml")):
        family = OmegaConf.load(backbone).family
        allowed = sorted(name for name, cfg in built.items() if family in cfg.families)
        assert sorted(bench.PAIRS[backbone.stem]) == allowed, backbone.stem
