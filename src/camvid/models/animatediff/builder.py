"""``build_animatediff_method``: the Hydra ``_target_`` / registry entry for the AnimateDiff family."""

from __future__ import annotations

import torch
from torch import nn

from camvid.models.animatediff.method import AnimateDiffT2V
from camvid.models.animatediff.unet import build_unet

__all__ = ["build_animatediff_method", "METHODS", "POSE_ENCODER_CONFIGS"]

METHODS = ("animatediff", "cameractrl", "motionctrl", "cami2v", "cvd")

# CameraCtrl's ``pose_encoder_kwargs`` (adv3 config); the tiny one mirrors the tiny UNet's levels.
POSE_ENCODER_CONFIGS = {
    "full": dict(downscale_factor=8, channels=(320, 640, 1280, 1280), nums_rb=2, temporal_attention_nhead=8,
                 temporal_position_encoding_max_len=16),
    "tiny": dict(downscale_factor=2, channels=(32, 64), nums_rb=2, temporal_attention_nhead=2,
                 temporal_position_encoding_max_len=16),
}


def build_animatediff_method(
    method: str = "cameractrl",
    size: str = "tiny",
    attn: str | None = None,
    attn_kwargs: dict | None = None,
    num_frames: int = 16,
    image_hw: tuple[int, int] = (64, 64),
    first_stage: nn.Module | None = None,
    text_encoder: nn.Module | None = None,
    device: torch.device | str | None = None,
    beta_schedule: str = "linear",
    freeze: bool = True,
    unet_kwargs: dict | None = None,
) -> AnimateDiffT2V:
    """AnimateDiff (``method="animatediff"``), CameraCtrl (``"cameractrl"``) or CVD (``"cvd"``).

    ``attn`` defaults to the method's own variant (``temporal``; ``cross_video`` for CVD); a mismatch
    (``cross_video`` without pairs, ``cvd`` with a single-video attention) raises ValueError naming
    both options. ``size="full"`` is the SD1.5 + AnimateDiff v3 architecture (random weights until
    :meth:`AnimateDiffT2V.load_pretrained`); ``device="meta"`` builds it without allocating.
    With ``freeze`` the base is frozen and only the method's new modules train.
    """
    if method not in METHODS:
        raise ValueError(f"model={method} does not run on an AnimateDiff backbone; choose one of {METHODS}")
    attn = attn or {"cvd": "cross_video", "cami2v": "epipolar"}.get(method, "temporal")
    if method == "cami2v" and attn not in ("epipolar", "epipolar_ref", "full3d"):
        raise ValueError(f"Invalid combination: model=cami2v on AnimateDiff adds a cross-frame attention; attn={attn} "
                         "is none; use attn=epipolar, epipolar_ref or full3d (or model=cameractrl)")
    if method in ("animatediff", "cameractrl", "motionctrl") and attn not in ("temporal", "cross_video"):
        raise ValueError(f"Invalid combination: model={method} has no cross-frame camera module for attn={attn}; "
                         "use attn=temporal, or model=cami2v")
    if method == "cvd" and attn != "cross_video":
        raise ValueError(
            f"Invalid combination: model=cvd synchronises video pairs but attn={attn} works within one video; "
            "with model=cvd use attn=cross_video"
        )
    if method != "cvd" and attn == "cross_video":
        raise ValueError(
            f"Invalid combination: attn=cross_video synchronises 2 videos but model={method} generates single "
            "videos; with that model use attn=temporal, or use model=cvd"
        )
    _check_frames(num_frames, image_hw)
    if first_stage is None or text_encoder is None:
        default_first, default_text = _default_encoders(size, device)
        first_stage = first_stage if first_stage is not None else default_first
        text_encoder = text_encoder if text_encoder is not None else default_text
    latent = first_stage.latent_channels
    unet = build_unet(
        size, device=device, in_channels=latent, out_channels=latent,
        cross_attention_dim=text_encoder.dim, **(unet_kwargs or {}),
    )
    pose_encoder = None
    if method in ("cameractrl", "cami2v", "cvd"):
        cfg = dict(POSE_ENCODER_CONFIGS[size], downscale_factor=first_stage.downsample,
                   channels=tuple(unet.config.block_out_channels))
        if num_frames > cfg["temporal_position_encoding_max_len"]:
            raise ValueError(
                f"num_frames={num_frames} exceeds CameraCtrl's pose-encoder positions "
                f"({cfg['temporal_position_encoding_max_len']})"
            )
        from camvid.models.camera.pose_encoder import CameraPoseEncoder

        with torch.device(device if device is not None else "cpu"):
            pose_encoder = CameraPoseEncoder(**cfg)
    model = AnimateDiffT2V(
        unet, first_stage, text_encoder,
        camera={"animatediff": None, "motionctrl": "motionctrl"}.get(method, "cameractrl"),
        cvd=method == "cvd", attn_variant=attn, pose_encoder=pose_encoder,
        attn_kwargs=attn_kwargs, beta_schedule=beta_schedule, image_hw=image_hw,
    )
    if freeze:
        model.freeze_base()
    return model


def _check_frames(num_frames: int, image_hw: tuple[int, int]) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image_hw must be (height, width), got {image_hw!r}")


def _default_encoders(size: str, device) -> tuple[nn.Module, nn.Module]:
    from camvid.models import encoders

    if size == "tiny":
        # factor 2: 64x64 videos -> 32x32 latents with 12 channels; decode(encode(v)) == v exactly.
        return encoders.PixelShuffleFirstStage(factor=2), encoders.HashTextEncoder(dim=64)
    if size == "full":
        from camvid.models.animatediff.sd15 import build_sd15_encoders

        return build_sd15_encoders(device)
    raise ValueError(f"unknown AnimateDiff size {size!r}; expected 'tiny' or 'full'")
