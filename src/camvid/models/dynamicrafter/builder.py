"""``build_dynamicrafter_method``: one call (and one Hydra ``_target_``) per method and size.

Sizes: ``"tiny"`` (CPU: pixel-shuffle first stage, hashed text encoder, tiny image encoder, a
~2 M-parameter UNet), ``"256"`` and ``"512"`` (the released DynamiCrafter architectures; the
KL-f8 VAE is read from ``vae_path``; the OpenCLIP ViT-H text/image towers are passed in as
``text_encoder=`` / ``image_encoder=`` modules with the encoder interface of
``camvid.models.encoders``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from camvid.models.camera.injection import CAMERA_METHODS
from camvid.models.camera.pose_encoder import CameraPoseEncoder
from camvid.models.dynamicrafter.image_proj import Resampler, resampler_config
from camvid.models.dynamicrafter.method import DynamiCrafterI2V
from camvid.models.dynamicrafter.unet import DynamiCrafterUNet, dynamicrafter_unet_config
from camvid.models.encoders import (
    AutoencoderKLFirstStage,
    HashTextEncoder,
    PixelShuffleFirstStage,
    TinyImageEncoder,
)

METHODS = ("dynamicrafter", *CAMERA_METHODS)
SIZES = ("tiny", "256", "512")

# the released 256 model is eps / linear schedule; the 512 one v / zero-SNR / dynamic rescale / fps
_SCHEDULES = {
    "tiny": dict(parameterization="eps"),
    "256": dict(parameterization="eps"),
    "512": dict(parameterization="v", zero_terminal_snr=True, dynamic_rescale=True, base_scale=0.7,
                turning_step=400, fs_condition_type="fps"),
}


def build_dynamicrafter_method(
    method: str = "cami2v",
    size: str = "tiny",
    attn: str | None = None,
    attn_kwargs: dict | None = None,
    num_frames: int = 16,
    image_hw: tuple[int, int] | None = None,
    vae_path: str | None = None,
    first_stage: nn.Module | None = None,
    text_encoder: nn.Module | None = None,
    image_encoder: nn.Module | None = None,
    pixel_shuffle_factor: int = 4,
    unet_overrides: dict | None = None,
    gradient_checkpointing: bool = False,
    device: torch.device | str | None = None,
    **method_kwargs,
) -> DynamiCrafterI2V:
    """``method``: dynamicrafter | motionctrl | cameractrl | cami2v. ``attn`` (default: epipolar for
    cami2v, temporal otherwise) picks CamI2V's cross-frame attention (temporal | full3d |
    epipolar_ref | epipolar); ``attn_kwargs`` go to ``camvid.attention.build_cross_frame_attention``
    (e.g. ``num_registers``). ``image_hw`` (the generation size) is only validated here.
    ``device="meta"`` builds without allocating. Extra keyword arguments go to ``DynamiCrafterI2V``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if size not in SIZES:
        raise ValueError(f"unknown DynamiCrafter size {size!r}; choose one of {', '.join(SIZES)}")
    attn = attn or ("epipolar" if method == "cami2v" else "temporal")
    if method != "cami2v" and attn != "temporal":
        raise ValueError(f"Invalid combination: attn={attn} is a CamI2V cross-frame attention but model={method} "
                         "has none; with that model use attn=temporal, or use model=cami2v")
    # no device given: keep the caller's default device (e.g. an enclosing ``with torch.device("meta")``)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return _build(method, size, attn, attn_kwargs, num_frames, image_hw, vae_path, first_stage, text_encoder,
                      image_encoder, pixel_shuffle_factor, unet_overrides, gradient_checkpointing, method_kwargs)


def _build(method, size, attn, attn_kwargs, num_frames, image_hw, vae_path, first_stage, text_encoder,
           image_encoder, pixel_shuffle_factor, unet_overrides, gradient_checkpointing, method_kwargs):
    unet_cfg = dynamicrafter_unet_config(size)
    unet_cfg.update(temporal_length=num_frames, gradient_checkpointing=gradient_checkpointing)
    if size == "tiny":
        first_stage = first_stage or PixelShuffleFirstStage(pixel_shuffle_factor)
        text_encoder = text_encoder or HashTextEncoder(dim=unet_cfg["context_dim"])
        image_encoder = image_encoder or TinyImageEncoder(dim=64)
    else:
        if first_stage is None:
            if vae_path is None:
                raise ValueError(f"size={size} needs vae_path= (a diffusers AutoencoderKL folder) or first_stage=")
            first_stage = AutoencoderKLFirstStage(vae_path)
        if text_encoder is None or image_encoder is None:
            raise ValueError(f"size={size} needs text_encoder= and image_encoder= modules (OpenCLIP ViT-H-14 "
                             "penultimate text tokens, dim 1024, and image tokens, dim 1280)")
    latent = first_stage.latent_channels
    unet_cfg.update(in_channels=2 * latent, out_channels=latent)
    unet_cfg.update(unet_overrides or {})
    if image_hw is not None:
        step = first_stage.downsample * 2 ** (len(unet_cfg.get("channel_mult", (1, 2, 4, 4))) - 1)
        if len(image_hw) != 2 or image_hw[0] % step or image_hw[1] % step:
            raise ValueError(f"image_hw={tuple(image_hw)} must be (height, width) divisible by {step} "
                             f"(first-stage factor {first_stage.downsample} x the UNet's downsampling)")
    unet = DynamiCrafterUNet(**unet_cfg)

    proj_cfg = resampler_config(size)
    proj_cfg.update(video_length=num_frames, embedding_dim=image_encoder.dim, output_dim=unet.context_dim)
    image_proj = Resampler(**proj_cfg)

    pose_encoder = None
    if method in ("cameractrl", "cami2v"):
        pose_encoder = CameraPoseEncoder(
            downscale_factor=first_stage.downsample, channels=tuple(unet.level_channels()),
            temporal_attention_nhead=8 if size != "tiny" else 4, temporal_position_encoding_max_len=num_frames)
    kwargs = dict(_SCHEDULES[size])
    kwargs.update(method_kwargs)
    return DynamiCrafterI2V(unet, first_stage, text_encoder, image_encoder, image_proj,
                            camera=None if method == "dynamicrafter" else method, pose_encoder=pose_encoder,
                            attn_variant=attn, attn_kwargs=attn_kwargs, **kwargs)
