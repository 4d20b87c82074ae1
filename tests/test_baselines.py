"""Sampling-only baselines (CVD's SparseCtrl / SVD rows): built from tiny random diffusers components saved
in the released layout, they render a RealEstate10K trajectory pair into the samples layout; missing
weights name the file and where it comes from; MotionCtrl's camera module on SVD is exact and its
released key layout round-trips."""

from __future__ import annotations

import json

import pytest
import torch

from camvid.baselines.sparsectrl import attach_cameractrl, official_cameractrl_state
from camvid.baselines.svd import (
    install_motionctrl_svd,
    load_motionctrl_svd,
    official_motionctrl_state,
    official_to_diffusers,
)
from camvid.baselines.tiny import save_tiny_sparsectrl, save_tiny_svd, tiny_svd_components
from camvid.baselines.weights import LAYOUT
from camvid.models.registry import build_method
from conftest import compose

HW = ["backbone.height=32", "backbone.width=32", "backbone.num_frames=8"]


SC = ("sd15", "motion_adapter", "sparsectrl", "cameractrl")
KEYS = {"animatediff_sparsectrl": SC, "cameractrl_sparsectrl": SC, "motionctrl_svd": ("svd", "motionctrl_svd")}


def _weights(folder, model) -> list[str]:
    return [f"model.weights.{k}={folder / LAYOUT[k]}" for k in KEYS[model]]


def _pair_cfg(model, folder, data_root):
    # backbone.size=full: the loaders of the released files, reading tiny files
    return compose([f"model={model}", "backbone=tiny_animatediff", "backbone.size=full", *HW, "data=re10k_fold",
                    f"data.root={data_root}", "data.stride_eval=2", "data.prepare=null", "paper_row=cvd_t2_cvd",
                    "backbone.sampler.steps=1", *_weights(folder, model)])


def _sample_pair(method, cfg, data_root, out_dir):
    from camvid.sampling import eval_split_dataset, sample_test_clip

    dataset = eval_split_dataset(cfg, str(data_root), "test")
    return sample_test_clip(method, cfg, dataset, 0, out_dir, base_seed=3, ckpt="released", steps=1)


@pytest.fixture(scope="module")
def sparsectrl_weights(tmp_path_factory):
    folder = save_tiny_sparsectrl(tmp_path_factory.mktemp("bl_weights"))
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(str(folder / LAYOUT["sd15"] / "unet")),
                                       MotionAdapter.from_pretrained(str(folder / LAYOUT["motion_adapter"])))
    encoder, _ = attach_cameractrl(unet, 2, "full", None, seed=1)  # random qkv_merge: the camera matters
    torch.save(official_cameractrl_state(encoder, unet), folder / LAYOUT["cameractrl"])
    return folder


def test_cameractrl_sparsectrl_renders_a_pair_into_the_samples_layout(sparsectrl_weights, data_root, tmp_path):
    from camvid.evaluation.layout import read_samples

    cfg = _pair_cfg("cameractrl_sparsectrl", sparsectrl_weights, data_root)
    method = build_method(cfg)
    folders = _sample_pair(method, cfg, data_root, tmp_path / "samples")
    assert len(folders) == 2
    records = {r.meta["view"]: r for r in read_samples(tmp_path / "samples")}
    assert sorted(records) == [0, 1]
    assert records[0].group == records[1].group is not None  # one pair: the cross-video metrics apply
    for rec in records.values():
        assert rec.meta["paper_row"] == "cvd_t2_cvd" and rec.meta["method"] == "cameractrl_sparsectrl"
    video = folders[1] / "video.mp4"
    assert video.is_file() and (folders[1] / "video.gif").is_file()

    # the camera reaches the model: moving view 1's trajectory changes view 1 only
    from camvid.sampling import eval_split_dataset, generate

    batch = eval_split_dataset(cfg, str(data_root), "test").collate([eval_split_dataset(cfg, str(data_root),
                                                                                        "test")[0]])
    first = generate(method, cfg, batch, seed=5, steps=1)
    moved = dict(batch, c2w=batch["c2w"].clone())
    moved["c2w"][1, 1:, :3, 3] += 0.5
    second = generate(method, cfg, moved, seed=5, steps=1)
    assert torch.equal(first[0], second[0])
    assert (first[1] - second[1]).abs().max() > 1e-3
    assert first.shape == (2, 8, 3, 32, 32) and first.min() >= -1 and first.max() <= 1


def test_animatediff_sparsectrl_ignores_cameras(sparsectrl_weights, data_root):
    from camvid.sampling import eval_split_dataset, generate

    cfg = _pair_cfg("animatediff_sparsectrl", sparsectrl_weights, data_root)
    method = build_method(cfg)
    assert method.pose_encoder is None
    dataset = eval_split_dataset(cfg, str(data_root), "test")
    batch = dataset.collate([dataset[0]])
    moved = dict(batch, c2w=batch["c2w"].clone())
    moved["c2w"][1, 1:, :3, 3] += 0.5
    assert torch.equal(generate(method, cfg, batch, seed=5, steps=1), generate(method, cfg, moved, seed=5, steps=1))


def test_motionctrl_svd_renders_a_pair_from_the_reference_first_frame(tmp_path, data_root):
    folder = save_tiny_svd(tmp_path / "w")
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(str(folder / LAYOUT["svd"] / "unet"))
    install_motionctrl_svd(unet)
    with torch.no_grad():
        for k, v in unet.state_dict().items():
            if ".cc_projection." in k:
                v.add_(torch.randn(v.shape) * 0.05)
    torch.save(official_motionctrl_state(unet), folder / LAYOUT["motionctrl_svd"])
    cfg = _pair_cfg("motionctrl_svd", folder, data_root)
    method = build_method(cfg)
    loaded = method.unet.state_dict()  # the released key layout round-trips
    for k, v in unet.state_dict().items():
        if ".cc_projection." in k or ".temporal_transformer_blocks.0.attn2." in k:
            assert torch.equal(loaded[k], v), k
    with pytest.raises(RuntimeError, match="reference_run"):
        _sample_pair(method, cfg, data_root, tmp_path / "none")

    seen = []

    def reference(batch, *, seed, steps):  # a MotionCtrl text-to-video stand-in: a fixed gradient video
        seen.append(batch["num_views"])
        T, H, W = batch["K"].shape[1], *batch["video"].shape[-2:]
        ramp = torch.linspace(-1, 1, W).view(1, 1, 1, 1, W)
        return ramp.expand(1, T, 3, H, W).clone()

    method.set_reference(reference)
    folders = _sample_pair(method, cfg, data_root, tmp_path / "samples")
    assert seen == [1] and len(folders) == 2
    metas = [json.loads((f / "meta.json").read_text()) for f in folders]
    assert [m["view"] for m in metas] == [0, 1] and metas[0]["group"] == metas[1]["group"]
    assert all(m["method"] == "motionctrl_svd" for m in metas)


def test_missing_weights_name_the_file_and_its_source(tmp_path):
    def full(model, *extra):
        return compose([f"model={model}", "backbone=animatediff", "data=re10k_fold",
                        *_weights(tmp_path, model), *extra])

    with pytest.raises(FileNotFoundError, match=r"model\.weights\.sd15=.*stable-diffusion-v1-5"):
        build_method(full("animatediff_sparsectrl"))
    for key in ("sd15", "motion_adapter", "sparsectrl"):
        (tmp_path / LAYOUT[key]).mkdir()
    with pytest.raises(FileNotFoundError, match=r"model\.weights\.cameractrl=.*CameraCtrl\.ckpt.*hehao13/CameraCtrl"):
        build_method(full("cameractrl_sparsectrl"))
    with pytest.raises(FileNotFoundError, match=r"model\.weights\.svd=.*stabilityai/stable-video-diffusion"):
        build_method(full("motionctrl_svd"))
    (tmp_path / LAYOUT["svd"]).mkdir()
    with pytest.raises(FileNotFoundError, match=r"motionctrl_svd\.ckpt.*TencentARC/MotionCtrl"):
        build_method(full("motionctrl_svd"))


def test_motionctrl_on_svd_starts_as_the_plain_unet_and_reads_released_names(tmp_path):
    unet = tiny_svd_components()["unet"].eval()
    z = torch.randn(2, 4, 8, 8, 8)  # (B, T=4, C, h, w): SVD's latent layout, 8 channels with the image latent
    args = dict(encoder_hidden_states=torch.randn(2, 1, 32), added_time_ids=torch.randn(2, 3))
    with torch.no_grad():
        plain = unet(z, 10.0, **args).sample
        adaptor = install_motionctrl_svd(unet)
        rt = torch.randn(2, 4, 12)
        with adaptor.feed(rt):  # cc_projection starts as [I | 0]: the camera changes nothing yet
            fresh = unet(z, 10.0, **args).sample
        torch.testing.assert_close(fresh, plain, rtol=1e-5, atol=1e-5)
        for proc in adaptor.processors:
            proc.cc_projection.weight[:, -12:].normal_(0, 0.1)
        with adaptor.feed(rt):
            moved = unet(z, 10.0, **args).sample
        assert (moved - plain).abs().max() > 1e-4
    key = "model.diffusion_model.output_blocks.4.1.time_stack.0.cc_projection.weight"
    assert official_to_diffusers(key, unet) == "up_blocks.1.attentions.1.temporal_transformer_blocks.0.attn1.processor." \
                                               "cc_projection.weight"
    assert official_to_diffusers("model.diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q.weight", unet) is None
    state = official_motionctrl_state(unet)["state_dict"]
    state.pop(next(iter(state)))
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="1 missing key"):
        load_motionctrl_svd(unet, path)


@pytest.mark.slow
def test_a_baseline_row_runs_sample_and_eval_through_the_job_at_tiny_scale(data_root, tmp_path):
    from camvid.experiments.stages import run_job

    run = tmp_path / "tables" / "tiny" / "cvd_t2" / "cvd_t2_cameractrl_sparsectrl" / "seed_1"
    cfg = compose(["experiment=cvd_t2_cameractrl_sparsectrl", "scale=tiny", "logger=none", f"paths.output_dir={run}",
                   f"paths.data_dir={data_root.parent}", f"data.root={data_root}", "data.prepare=null", *HW[:2],
                   "stage_sample.num_samples=1", "stage_sample.steps=1", "stage_eval.metrics=[geometry]", "seed=1"])
    summary = run_job(cfg)
    assert summary["stages"] == ["sample", "eval"]  # the sampling-only row skips scale=tiny's train stage
    results = json.loads((run / "samples" / "eval" / "results.json").read_text())
    assert results["paper_row"] == "cvd_t2_cameractrl_sparsectrl"
    cross = {r["metric"]: r for r in results["rows"]}["xRotAUC@5"]
    assert cross["value"] is not None and "1 groups" in cross["note"]  # the pair is evaluated as a pair
