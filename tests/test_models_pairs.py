"""Method x backbone pairs added by issue 7: each trains two steps and samples at tiny size."""

from __future__ import annotations

import pytest
import torch

from camvid.config import ConfigError, check_combination
from camvid.evaluation.layout import read_samples
from camvid.sampling import run_sampling
from camvid.training.loop import train
from conftest import compose, data_overrides, run_overrides

PAIRS = [("animatediff", "animatediff")]


@pytest.mark.parametrize("model,family", PAIRS)
def test_new_pair_trains_two_steps_and_samples(model, family, data_root, tmp_path):
    cfg = compose(run_overrides(data_root, tmp_path, f"model={model}", f"backbone=tiny_{family}",
                                *data_overrides(model, data_root)))
    summary = train(cfg)
    assert summary["step"] == 2 and torch.isfinite(torch.tensor(summary["loss"]))
    image = sorted((data_root / "train" / "frames").glob("*/00000.png"))[0]
    sample_cfg = compose(["steps=2", f"run_dir={tmp_path}", f"image={image}", "caption=a room",
                          f"out_dir={tmp_path / 'samples'}"], config_name="sample")
    [folder] = run_sampling(sample_cfg)
    [record] = read_samples(tmp_path / "samples")
    video = record.load_video()
    assert video.shape == (8, 32, 32, 3) and video.std() > 0
    assert record.meta["method"] == model and folder.is_dir()


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
