"""``build_dynamicrafter_method``: one call (and one Hydra ``_target_``) per method and size.

Sizes: ``"tiny"`` (CPU: pixel-shuffle first stage, hashed text encoder, tiny image encoder, a
~2 M-parameter UNet), ``"256"`` and ``"512"`` (the released DynamiCrafter architectures with their
real encoders: the LDM KL-f8 VAE on diffusers' ``AutoencoderKL`` and the OpenCLIP ViT-H/14 text and
image towers on transformers' CLIP classes, all filled from the one released ``model.ckpt``).

With ``pretrained=`` the files are checked first; the pretrained part of the model (UNet, encoders,
image projector) is then built with its parameters on ``meta`` and materialised by the load, so
building needs about the weights' size in memory. The camera modules, the pose encoder and all
buffers are built for real (a base file does not hold them; ``method_ckpt=`` fills them).
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

WEIGHT_SOURCES = {
    "256": "https://huggingface.co/Doubiiu/DynamiCrafter (model.ckpt)",
    "512": "https://huggingface.co/Doubiiu/DynamiCrafter_512 (model.ckpt)",
    "tiny": "a checkpoint of a tiny camvid run",
}
METHOD_SOURCES = {
    "cami2v": "https://huggingface.co/MuteApo/CamI2V (256_cami2v.pt, 512_cami2v_50k.pt)",
    "cameractrl": "https://huggingface.co/MuteApo/CamI2V (256_cameractrl.pt)",
    "motionctrl": "https://huggingface.co/MuteApo/CamI2V (256_motionctrl.pt)",
    "cvd": "https://huggingface.co/MuteApo/CamI2V (256_cameractrl.pt, the CameraCtrl CVD sits on) or a camvid run",
}

METHODS = ("dynamicrafter", *CAMERA_METHODS, "cvd")
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
    pretrained: str | None = None,
    method_ckpt: str | None = None,
    tokenizer_path: str | None = None,
    encoder_config: dict | None = None,
    proj_overrides: dict | None = None,
    pose_fourier_bands: int = 0,
    **method_kwargs,
) -> DynamiCrafterI2V:
    """``method``: dynamicrafter | motionctrl | cameractrl | cami2v. ``attn`` (default: epipolar for
    cami2v, temporal otherwise) picks CamI2V's cross-frame attention (temporal | full3d |
    epipolar_ref | epipolar); ``attn_kwargs`` go to ``camvid.attention.build_cross_frame_attention``
    (e.g. ``num_registers``). ``image_hw`` (the generation size) is only validated here.
    ``device="meta"`` builds without allocating. ``pretrained``: the base ``model.ckpt``;
    ``method_ckpt``: a released camera-method checkpoint loaded over it (both checked before anything
    is built). ``tokenizer_path``: the CLIP BPE tokenizer folder of the OpenCLIP text tower (full
    sizes). ``encoder_config`` (``{"first_stage"|"text"|"image": config overrides}``) and
    ``proj_overrides`` shrink the full-size encoders / projector (tests of the loading path).
    ``pose_fourier_bands``: Fourier channels of the Plücker rays in the pose encoder (0, the released
    layout; an experiment option of the tiny CPU world, see ``CameraPoseEncoder``). Extra keyword arguments go to
    ``DynamiCrafterI2V``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if size not in SIZES:
        raise ValueError(f"unknown DynamiCrafter size {size!r}; choose one of {', '.join(SIZES)}")
    attn = attn or {"cami2v": "epipolar", "cvd": "cross_video"}.get(method, "temporal")
    if method == "cvd" and attn != "cross_video":
        raise ValueError(f"Invalid combination: model=cvd synchronises video pairs but attn={attn} works within one "
                         "video; with model=cvd use attn=cross_video")
    if method not in ("cami2v", "cvd") and attn != "temporal":
        raise ValueError(f"Invalid combination: attn={attn} is a CamI2V cross-frame attention but model={method} "
                         "has none; with that model use attn=temporal, or use model=cami2v")
    check_weight_files(method, size, pretrained, method_ckpt)
    if pretrained is not None and size != "tiny" and tokenizer_path is not None and text_encoder is None:
        from pathlib import Path

        from camvid.models.openclip import check_tokenizer

        check_tokenizer(Path(tokenizer_path))
    # no device given: keep the caller's default device (e.g. an enclosing ``with torch.device("meta")``,
    # a dry run that builds and loads manifest-shaped files without memory)
    dry_run = str(device if device is not None else torch.get_default_device()) == "meta"
    own_encoders = vae_path is None and first_stage is None and text_encoder is None and image_encoder is None
    if not dry_run and size != "tiny" and own_encoders and (pretrained is not None or method_ckpt is not None):
        # a file of the wrong kind fails here, checked against the model built on meta (nothing
        # allocated, nothing read), before the real build allocates the camera modules or the load the base
        with torch.device("meta"):
            shadow = _build(method, size, attn, attn_kwargs, num_frames, image_hw, None, None, None, None,
                            pixel_shuffle_factor, unet_overrides, gradient_checkpointing, dict(method_kwargs),
                            tokenizer_path, False, encoder_config or {}, proj_overrides or {}, pose_fourier_bands)
        from camvid.models.dynamicrafter.checkpoint import load_dynamicrafter_weights

        for path, kind in ((pretrained, "base"), (method_ckpt, "method")):
            if path is not None:
                load_dynamicrafter_weights(shadow, path, kind=kind, check_only=True)
        del shadow
    # the pretrained trunk gets meta parameters (real buffers) and is materialised by the load
    lazy = pretrained is not None and size != "tiny" and not dry_run
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = _build(method, size, attn, attn_kwargs, num_frames, image_hw, vae_path, first_stage, text_encoder,
                       image_encoder, pixel_shuffle_factor, unet_overrides, gradient_checkpointing, method_kwargs,
                       tokenizer_path, lazy, encoder_config or {}, proj_overrides or {}, pose_fourier_bands)
    if pretrained is not None:
        model.load_weights(pretrained, kind="base")
    if method_ckpt is not None:
        model.load_weights(method_ckpt, kind="method")
    if not dry_run:
        from camvid.models.dynamicrafter.checkpoint import meta_tensors

        left = meta_tensors(model)
        if left:
            raise RuntimeError(f"{len(left)} tensors were not filled by pretrained={pretrained}, e.g. {left[:5]}")
    return model


def check_weight_files(method: str, size: str, pretrained, method_ckpt) -> None:
    """Missing files fail here, naming where to get them, before anything is allocated."""
    from pathlib import Path

    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained={pretrained}: file not found. The DynamiCrafter {size} base is "
                                f"{WEIGHT_SOURCES[size]}; place it there or set pretrained=PATH.")
    if method_ckpt is not None:
        if method == "dynamicrafter":
            raise ValueError(f"method_ckpt={method_ckpt}: model=dynamicrafter has no camera modules; pass a "
                             "DynamiCrafter checkpoint as pretrained= instead")
        if not Path(method_ckpt).is_file():
            raise FileNotFoundError(f"method_ckpt={method_ckpt}: file not found. The released {method} weights are "
                                    f"{METHOD_SOURCES.get(method, 'the checkpoint of a camvid run')}.")


def _meta_params():
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def _build(method, size, attn, attn_kwargs, num_frames, image_hw, vae_path, first_stage, text_encoder,
           image_encoder, pixel_shuffle_factor, unet_overrides, gradient_checkpointing, method_kwargs,
           tokenizer_path=None, lazy=False, encoder_config=None, proj_overrides=None, pose_fourier_bands=0):
    encoder_config = encoder_config or {}
    unknown = set(encoder_config) - {"first_stage", "text", "image"}
    if unknown:
        raise ValueError(f"encoder_config keys {sorted(unknown)}: choose first_stage, text, image")
    unet_cfg = dynamicrafter_unet_config(size)
    unet_cfg.update(temporal_length=num_frames, gradient_checkpointing=gradient_checkpointing)
    trunk = _meta_params() if lazy else contextlib.nullcontext()
    if size == "tiny":
        first_stage = first_stage or PixelShuffleFirstStage(pixel_shuffle_factor)
        text_encoder = text_encoder or HashTextEncoder(dim=unet_cfg["context_dim"])
        image_encoder = image_encoder or TinyImageEncoder(dim=64)
    else:
        with trunk:
            if first_stage is None:
                if vae_path is not None:
                    first_stage = AutoencoderKLFirstStage(vae_path)
                else:
                    from camvid.models.ldm_vae import LDMFirstStage

                    first_stage = LDMFirstStage(encoder_config.get("first_stage"))
            from camvid.models.openclip import OpenCLIPImageEncoder, OpenCLIPTextEncoder

            text_encoder = text_encoder or OpenCLIPTextEncoder(encoder_config.get("text"), tokenizer_path)
            image_encoder = image_encoder or OpenCLIPImageEncoder(encoder_config.get("image"))
    latent = first_stage.latent_channels
    unet_cfg.update(in_channels=2 * latent, out_channels=latent)
    unet_cfg.update(unet_overrides or {})
    if image_hw is not None:
        step = first_stage.downsample * 2 ** (len(unet_cfg.get("channel_mult", (1, 2, 4, 4))) - 1)
        if len(image_hw) != 2 or image_hw[0] % step or image_hw[1] % step:
            raise ValueError(f"image_hw={tuple(image_hw)} must be (height, width) divisible by {step} "
                             f"(first-stage factor {first_stage.downsample} x the UNet's downsampling)")
    with _meta_params() if lazy else contextlib.nullcontext():
        unet = DynamiCrafterUNet(**unet_cfg)
        proj_cfg = resampler_config(size)
        proj_cfg.update(video_length=num_frames, embedding_dim=image_encoder.dim, output_dim=unet.context_dim)
        proj_cfg.update(proj_overrides or {})
        image_proj = Resampler(**proj_cfg)

    pose_encoder = None
    if method in ("cameractrl", "cami2v", "cvd") and method_kwargs.get("plucker", True):
        pose_encoder = CameraPoseEncoder(
            downscale_factor=first_stage.downsample, channels=tuple(unet.level_channels()),
            temporal_attention_nhead=8 if size != "tiny" else 4, temporal_position_encoding_max_len=num_frames,
            fourier_bands=pose_fourier_bands)
    kwargs = dict(_SCHEDULES[size])
    kwargs.update(method_kwargs)
    camera = {"dynamicrafter": None, "cvd": "cameractrl"}.get(method, method)
    return DynamiCrafterI2V(unet, first_stage, text_encoder, image_encoder, image_proj,
                            camera=camera, pose_encoder=pose_encoder, attn_variant=attn, attn_kwargs=attn_kwargs,
                            cvd=method == "cvd", **kwargs)
