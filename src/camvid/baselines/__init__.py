"""Sampling-only baselines: released systems (SparseCtrl, CameraCtrl, Stable Video Diffusion,
MotionCtrl) run through their diffusers pipelines and written in the samples layout, so CVD's
baseline rows flow through the same evaluation (docs/models.md, "Sampling-only baselines")."""

from __future__ import annotations

from omegaconf import DictConfig

from camvid.baselines.base import SamplingOnlyMethod
from camvid.baselines.weights import LAYOUT, SOURCES

__all__ = ["BASELINES", "LAYOUT", "SOURCES", "SamplingOnlyMethod", "build_baseline"]

BASELINES = ("sparsectrl", "motionctrl_svd")


def _weights(cfg: DictConfig, key: str, folder: bool):
    from camvid.baselines.weights import require

    return require(cfg.model.weights[key], key, f"model.weights.{key}", folder)


def _tiny(cfg: DictConfig) -> bool:
    return str(cfg.backbone.size) == "tiny"


def build_baseline(cfg: DictConfig) -> SamplingOnlyMethod:
    """The sampling-only method of ``cfg.model.baseline``: full size from the local files of
    ``model.weights`` (every file checked before anything loads), ``backbone.size=tiny`` from tiny
    random components built in memory (camvid.baselines.tiny)."""
    kind = cfg.model.get("baseline")
    if kind not in BASELINES:
        raise ValueError(f"model.baseline={kind}: choose one of {list(BASELINES)}")
    if kind == "sparsectrl":
        return _build_sparsectrl(cfg)
    return _build_motionctrl_svd(cfg)


def _scheduler(cfg: DictConfig):
    from camvid.diffusion.ddim import diffusers_ddim_scheduler

    s = cfg.model.sampler
    # AnimateDiff / CameraCtrl inference: linear betas 0.00085 .. 0.012 over 1000 steps, eps
    return diffusers_ddim_scheduler({"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012},
                                    num_steps=int(s.steps), spacing=str(s.spacing),
                                    steps_offset=int(s.get("steps_offset", 1)),
                                    set_alpha_to_one=bool(s.get("set_alpha_to_one", False)))


def _build_sparsectrl(cfg: DictConfig):
    from diffusers import UNetMotionModel

    from camvid.baselines.sparsectrl import SparseCtrlPairs, attach_cameractrl

    camera = cfg.model.get("camera")
    if camera not in (None, "cameractrl"):
        raise ValueError(f"model.camera={camera}: the SparseCtrl baseline takes null (AnimateDiff + SparseCtrl) or "
                         "cameractrl (CameraCtrl + SparseCtrl)")
    if _tiny(cfg):
        from camvid.baselines.tiny import tiny_sparsectrl_components

        parts = tiny_sparsectrl_components(seed=0)
        ckpt = None
    else:
        from diffusers import AutoencoderKL, MotionAdapter, SparseControlNetModel, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        sd = _weights(cfg, "sd15", folder=True)
        adapter_dir = _weights(cfg, "motion_adapter", folder=True)
        control_dir = _weights(cfg, "sparsectrl", folder=True)
        ckpt = _weights(cfg, "cameractrl", folder=False) if camera else None
        for sub in ("unet", "vae", "text_encoder", "tokenizer"):
            if not (sd / sub).is_dir():
                raise FileNotFoundError(f"model.weights.sd15={sd}: no {sub}/ folder ({SOURCES['sd15']})")
        local = dict(local_files_only=True)
        parts = {"unet": UNet2DConditionModel.from_pretrained(str(sd / "unet"), **local),
                 "vae": AutoencoderKL.from_pretrained(str(sd / "vae"), **local),
                 "text_encoder": CLIPTextModel.from_pretrained(str(sd / "text_encoder"), **local),
                 "tokenizer": CLIPTokenizer.from_pretrained(str(sd / "tokenizer"), **local),
                 "motion_adapter": MotionAdapter.from_pretrained(str(adapter_dir), **local),
                 "controlnet": SparseControlNetModel.from_pretrained(str(control_dir), **local)}
    unet = UNetMotionModel.from_unet2d(parts["unet"], parts["motion_adapter"])
    vae_scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    pose_encoder = adaptor = None
    if camera:
        pose_encoder, adaptor = attach_cameractrl(unet, vae_scale, "tiny" if _tiny(cfg) else "full", ckpt, seed=0)
    method = SparseCtrlPairs(unet, parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["controlnet"],
                             _scheduler(cfg), pose_encoder=pose_encoder, pose_adaptor=adaptor,
                             eta=float(cfg.model.sampler.get("eta", 0.0)), default_steps=int(cfg.model.sampler.steps),
                             default_scale=float(cfg.model.guidance.scale))
    method.freeze_base()
    return method.eval()


def _build_motionctrl_svd(cfg: DictConfig):
    from diffusers import StableVideoDiffusionPipeline

    from camvid.baselines.svd import MotionCtrlSVDPairs, install_motionctrl_svd, load_motionctrl_svd

    if _tiny(cfg):
        from camvid.baselines.tiny import tiny_svd_components

        pipe = StableVideoDiffusionPipeline(**tiny_svd_components(seed=0))
        ckpt = None
    else:
        svd_dir = _weights(cfg, "svd", folder=True)
        ckpt = _weights(cfg, "motionctrl_svd", folder=False)
        pipe = StableVideoDiffusionPipeline.from_pretrained(str(svd_dir), local_files_only=True)
    adaptor = install_motionctrl_svd(pipe.unet)
    if ckpt is not None:
        load_motionctrl_svd(pipe.unet, ckpt)
    else:  # the tiny stand-in: a small random camera projection so the cameras reach the output
        import torch

        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for proc in adaptor.processors:
                w = proc.cc_projection.weight
                w[:, -12:].copy_(torch.randn(w.shape[0], 12, generator=gen) * 0.05)
    from omegaconf import OmegaConf

    svd_kwargs = OmegaConf.to_container(cfg.model.svd, resolve=True) if cfg.model.get("svd") else {}
    method = MotionCtrlSVDPairs(pipe, adaptor, svd_kwargs, default_steps=int(cfg.model.sampler.steps))
    method.freeze_base()
    return method.eval()
