"""``build_animatediff_method``: the Hydra ``_target_`` / registry entry for the AnimateDiff family."""

from __future__ import annotations

import contextlib
from pathlib import Path

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
    pretrained: str | Path | None = None,
    method_ckpt: str | Path | None = None,
) -> AnimateDiffT2V:
    """AnimateDiff (``method="animatediff"``), CameraCtrl (``"cameractrl"``) or CVD (``"cvd"``).

    ``attn`` defaults to the method's own variant (``temporal``; ``cross_video`` for CVD); a mismatch
    (``cross_video`` without pairs, ``cvd`` with a single-video attention) raises ValueError naming
    both options. ``size="full"`` is the SD1.5 + AnimateDiff v3 architecture (random weights until
    :meth:`AnimateDiffT2V.load_pretrained`); ``device="meta"`` builds it without allocating.
    With ``freeze`` the base is frozen and only the method's new modules train.

    ``pretrained``: a weights folder (see :mod:`camvid.models.animatediff.checkpoints`) and
    ``method_ckpt``: a method file over it; both are checked before anything is built. At full size the
    parts those files hold (SD1.5 UNet/VAE/text tower, motion modules, CameraCtrl pose encoder and
    ``qkv_merge``) get their parameters on ``meta`` and are materialised by the load, so the build needs
    about the weights' size in memory; the modules no file holds (MotionCtrl, cross-frame, CVD sync)
    are built on the real device with their (identity / zero) initialisation, and CVD.ckpt, when
    present, is copied into them. A tensor still on ``meta`` after the load raises RuntimeError.
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
    method_kind = check_weight_files(pretrained, method_ckpt, method)
    if pretrained is not None and size == "full":
        check_weight_folder(Path(pretrained), method, vae=first_stage is None, text=text_encoder is None)
    dry_run = str(device if device is not None else torch.get_default_device()) == "meta"
    # full size with weights: what the files fill is built with meta parameters (real buffers)
    lazy = pretrained is not None and size == "full" and not dry_run
    real = torch.device("cpu") if lazy else None  # lazy: built on the CPU, loaded there, then moved
    target = device
    if lazy:
        device = None
    # CVD.ckpt (in the folder or as method_ckpt) fills the sync modules: their parameters wait on meta too
    sync_from_file = method == "cvd" and not dry_run and (
        method_kind == "CVD.ckpt" or (pretrained is not None and (Path(pretrained) / "CVD.ckpt").is_file()))
    trunk = _meta_params if lazy else contextlib.nullcontext
    if first_stage is None or text_encoder is None:
        with trunk():
            default_first, default_text = _default_encoders(size, device)
        first_stage = first_stage if first_stage is not None else default_first
        text_encoder = text_encoder if text_encoder is not None else default_text
    latent = first_stage.latent_channels
    with trunk():
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

        with trunk(), torch.device(device if device is not None else "cpu"):
            pose_encoder = CameraPoseEncoder(**cfg)
    model = AnimateDiffT2V(
        unet, first_stage, text_encoder,
        camera={"animatediff": None, "motionctrl": "motionctrl"}.get(method, "cameractrl"),
        cvd=method == "cvd", attn_variant=attn, pose_encoder=pose_encoder,
        attn_kwargs=attn_kwargs, beta_schedule=beta_schedule, image_hw=image_hw, module_device=real,
        sync_from_file=sync_from_file,
    )
    if pretrained is not None:
        model.load_pretrained(Path(pretrained))
    if method_ckpt is not None:
        model.load_method_checkpoint(Path(method_ckpt))
    if not dry_run:
        left = meta_tensors(model)
        if left:
            raise RuntimeError(
                f"{len(left)} parameter(s)/buffer(s) of the full-size {method} were not filled by "
                f"pretrained={pretrained} and stay on meta, e.g. {left[:5]}; the folder needs "
                "stable-diffusion-v1-5/ (unet, vae, text_encoder, tokenizer) and v3_sd15_mm.ckpt"
                + ("" if model.pose_encoder is None else ", and CameraCtrl.ckpt")
            )
    if target is not None and not dry_run:
        model.to(target)  # what the loads materialised sits on the CPU
    if freeze:
        model.freeze_base()
    return model


def check_weight_files(pretrained, method_ckpt, method: str | None = None) -> str | None:
    """Missing or wrong-kind weights fail here, naming the expected layout and where to get it, before
    anything is allocated. Returns the kind of ``method_ckpt`` (``CameraCtrl.ckpt``, ``CVD.ckpt``,
    ``lora``), read from its keys, or None."""
    from camvid.models.animatediff.checkpoints import (
        CAMERACTRL_FILE,
        CVD_FILE,
        MOTION_FILE,
        SD15_DIR,
        WEIGHT_SOURCES,
        check_method_file,
        method_file_kind,
    )

    if pretrained is not None and not Path(pretrained).is_dir():
        what = " (a file: the AnimateDiff family's pretrained= is a folder)" if Path(pretrained).is_file() else ""
        raise FileNotFoundError(
            f"pretrained={pretrained}: no such folder{what}. The AnimateDiff family loads a folder holding "
            f"{SD15_DIR}/, {MOTION_FILE}, {CAMERACTRL_FILE} (camera methods) and optionally {CVD_FILE}; "
            f"get them from {WEIGHT_SOURCES}; see docs/models.md"
        )
    if method_ckpt is None:
        return None
    return check_method_file(Path(method_ckpt), method) if method is not None else method_file_kind(Path(method_ckpt))


def check_weight_folder(folder: Path, method: str, vae: bool = True, text: bool = True) -> None:
    """The files a full-size ``method`` needs from the weights folder (``vae``/``text``: the SD1.5
    encoders are ours to fill), all named at once with where to get them, before anything is built."""
    from camvid.models.animatediff.checkpoints import CAMERACTRL_FILE, MOTION_FILE, SD15_DIR

    sd15 = "huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"
    needs = {f"{SD15_DIR}/unet/": sd15, MOTION_FILE: "huggingface.co/guoyww/animatediff"}
    if vae:
        needs[f"{SD15_DIR}/vae/"] = sd15
    if text:
        needs[f"{SD15_DIR}/text_encoder/"] = sd15
        needs[f"{SD15_DIR}/tokenizer/"] = sd15
    if method in ("cameractrl", "cami2v", "cvd"):
        needs[CAMERACTRL_FILE] = "huggingface.co/hehao13/CameraCtrl"
    missing = [f"{name} ({source})" for name, source in needs.items()
               if not ((folder / name).is_dir() if name.endswith("/") else (folder / name).is_file())]
    if missing:
        raise FileNotFoundError(f"pretrained={folder}: model={method} at full size needs " + ", ".join(missing)
                                + " in that folder; see docs/models.md")


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of parameters and buffers still on ``meta``."""
    return [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]


def _meta_params():
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


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
