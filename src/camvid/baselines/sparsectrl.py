"""AnimateDiff + SparseCtrl and CameraCtrl + SparseCtrl (CVD's baseline rows), through diffusers'
``AnimateDiffPipeline`` and ``AnimateDiffSparseControlNetPipeline``.

A pair is rendered as CVD describes (Sec. 5.1): the text-to-video model (AnimateDiff v3, with
CameraCtrl for the camera row) renders view 0 along its trajectory; SparseCtrl's RGB encoder then
conditions the same UNet on view 0's first frame (frame index 0) to render view 1 along the second
trajectory. Both halves share one UNet, one scheduler (the AnimateDiff DDIM settings of
``model.sampler``) and the text CFG scale of ``model.guidance``.

Camera input: diffusers has no CameraCtrl class. CameraCtrl's pose encoder (Plücker rays of the
view's cameras -> per-level features) and its ``qkv_merge`` in the first temporal attention of every
motion module are camvid's (``camvid.models.camera.pose_encoder``, ``camvid.models.animatediff.
pose_adaptor``), installed on the pipeline's ``UNetMotionModel`` and filled from ``CameraCtrl.ckpt``.
The features are fed around the pipeline call, doubled for the unconditional half of CFG (CameraCtrl
conditions both halves on the camera). SparseCtrl's control branch sees no camera.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from camvid.baselines.base import SamplingOnlyMethod, first_frame_image, pair_indices, to_signed

__all__ = ["SparseCtrlPairs", "attach_cameractrl", "official_cameractrl_state"]


class SparseCtrlPairs(SamplingOnlyMethod):
    """Text-to-video view 0, SparseCtrl image-to-video view 1 from its first frame.

    Args:
        unet: AnimateDiff's ``UNetMotionModel`` (SD1.5 + motion adapter), with CameraCtrl's adaptor
            installed when ``pose_encoder`` is given.
        vae, text_encoder, tokenizer: SD1.5's.
        controlnet: SparseCtrl's RGB ``SparseControlNetModel``.
        scheduler: the DDIM scheduler both halves use.
        pose_encoder / pose_adaptor: CameraCtrl (``None``: AnimateDiff + SparseCtrl, no camera input).
        eta: DDIM eta.
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, controlnet, scheduler, *, pose_encoder=None,
                 pose_adaptor=None, eta: float = 0.0, default_steps: int = 25, default_scale: float = 8.5):
        super().__init__()
        from diffusers import AnimateDiffPipeline, AnimateDiffSparseControlNetPipeline

        if (pose_encoder is None) != (pose_adaptor is None):
            raise ValueError("CameraCtrl needs both its pose encoder and the adaptor installed in the UNet")
        self.unet, self.vae, self.text_encoder, self.controlnet = unet, vae, text_encoder, controlnet
        self.pose_encoder = pose_encoder
        self.pose_adaptor = pose_adaptor
        self.eta, self.default_steps, self.default_scale = float(eta), int(default_steps), float(default_scale)
        parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, motion_adapter=None,
                     scheduler=scheduler)
        self.t2v = AnimateDiffPipeline(**parts)
        self.i2v = AnimateDiffSparseControlNetPipeline(**parts, controlnet=controlnet)
        for pipe in (self.t2v, self.i2v):
            pipe.set_progress_bar_config(disable=True)
        self.supports = {"text", "camera"} if pose_encoder is not None else {"text"}

    def _camera(self, batch: dict, v: int, height: int, width: int, cfg_halves: int):
        """CameraCtrl's per-level pose features of view ``v`` (repeated for the CFG halves) fed around
        one pipeline call; the plain AnimateDiff UNet without CameraCtrl."""
        from contextlib import nullcontext

        from camvid.geometry.plucker import plucker_rays

        if self.pose_encoder is None:
            return nullcontext()
        device = next(self.pose_encoder.parameters()).device
        K, c2w = batch["K"][v:v + 1].to(device), batch["c2w"][v:v + 1].to(device)
        dtype = next(self.pose_encoder.parameters()).dtype
        rays = plucker_rays(K.float(), c2w.float(), height, width).to(dtype)  # (1, T, 6, H, W)
        features = [f.repeat(cfg_halves, *([1] * (f.dim() - 1))) for f in self.pose_encoder(rays)]
        return self.pose_adaptor.feed(features, int(K.shape[1]))

    @torch.no_grad()
    def generate(self, batch: dict, *, seed: int, steps: int | None = None, guidance: dict | None = None):
        steps = int(steps or self.default_steps)
        scale = float((guidance or {}).get("scale", self.default_scale))
        T = int(batch["K"].shape[1])
        height, width = (int(s) for s in batch["video"].shape[-2:])
        halves = 2 if scale > 1 else 1  # the pipelines skip the unconditional half at scale <= 1
        device = next(self.unet.parameters()).device
        gen = torch.Generator(device=device).manual_seed(int(seed))
        common = dict(height=height, width=width, num_frames=T, num_inference_steps=steps, guidance_scale=scale,
                      eta=self.eta, generator=gen, output_type="pt")
        out = [None] * int(batch["K"].shape[0])
        for a, b in pair_indices(batch):
            with self._camera(batch, a, height, width, halves):
                ref = self.t2v(prompt=str(batch["caption"][a]), **common).frames[0]
            out[a] = to_signed(ref)
            with self._camera(batch, b, height, width, halves):
                second = self.i2v(prompt=str(batch["caption"][b]), conditioning_frames=[first_frame_image(out[a])],
                                  controlnet_frame_indices=[0], **common).frames[0]
            out[b] = to_signed(second)
        return torch.stack(out).cpu()


def attach_cameractrl(unet, vae_scale: int, size: str, ckpt: Path | None, *, seed: int | None = None):
    """CameraCtrl on a diffusers ``UNetMotionModel``: the adaptor in every motion module's first
    temporal attention and the pose encoder sized to the UNet's levels, filled from ``ckpt``
    (``CameraCtrl.ckpt``: ``pose_encoder_state_dict`` + ``attention_processor_state_dict``, loaded
    strictly). Without a file (the tiny stand-in) ``qkv_merge`` gets small random weights under
    ``seed`` so the camera reaches the output."""
    from camvid.models.animatediff.builder import POSE_ENCODER_CONFIGS
    from camvid.models.animatediff.checkpoints import load_cameractrl
    from camvid.models.animatediff.pose_adaptor import install_pose_adaptor
    from camvid.models.camera.pose_encoder import CameraPoseEncoder

    adaptor = install_pose_adaptor(unet)
    encoder = CameraPoseEncoder(**dict(POSE_ENCODER_CONFIGS[size], downscale_factor=int(vae_scale),
                                       channels=tuple(unet.config.block_out_channels)))
    if ckpt is not None:
        load_cameractrl(SimpleNamespace(pose_encoder=encoder, unet=unet), Path(ckpt))
    else:
        gen = torch.Generator().manual_seed(int(seed or 0))
        with torch.no_grad():
            for p in adaptor.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return encoder, adaptor


def official_cameractrl_state(pose_encoder: nn.Module, unet) -> dict:
    """``CameraCtrl.ckpt``'s content for a pose encoder and an adaptor-carrying UNet (official names)."""
    from camvid.models.animatediff.key_mapping import convert_to_official_state_dict

    merge = {k: v for k, v in unet.state_dict().items() if ".processor.qkv_merge." in k}
    return {"pose_encoder_state_dict": pose_encoder.state_dict(),
            "attention_processor_state_dict": convert_to_official_state_dict(merge)}
