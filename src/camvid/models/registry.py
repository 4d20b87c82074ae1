"""One entry point from the composed config to a method: backbone family x camera method x attention."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from camvid.config import check_combination
from camvid.models.base import VideoDiffusionModel

__all__ = ["build_method", "set_trainable", "trains_base", "WEIGHT_SOURCES"]

# Where the official weights come from (they cannot be downloaded by the code: place them by hand).
WEIGHT_SOURCES = {
    "dynamicrafter": "https://huggingface.co/Doubiiu/DynamiCrafter (model.ckpt; _512 for 512x320)",
    "animatediff": (
        "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5, "
        "https://huggingface.co/guoyww/animatediff (v3_sd15_mm.ckpt), "
        "https://huggingface.co/hehao13/CameraCtrl (CameraCtrl.ckpt), "
        "https://github.com/CollaborativeVideoDiffusion/CVD (CVD.ckpt)"
    ),
}


def _plain(node) -> dict:
    return {} if node is None else OmegaConf.to_container(node, resolve=True)


def _attn_kwargs(attn: DictConfig) -> dict:
    kw = OmegaConf.to_container(attn, resolve=True)
    for key in ("name", "variant", "views"):
        kw.pop(key, None)
    return kw


def build_method(cfg: DictConfig) -> VideoDiffusionModel:
    """Instantiate the method selected by ``cfg.model`` on ``cfg.backbone`` with ``cfg.attn``."""
    check_combination(cfg)
    family = cfg.backbone.family
    kwargs = dict(
        method=cfg.model.name,
        size=str(cfg.backbone.size),
        attn=cfg.attn.variant,
        attn_kwargs=_attn_kwargs(cfg.attn),
        num_frames=int(cfg.backbone.num_frames),
        image_hw=(int(cfg.backbone.height), int(cfg.backbone.width)),
        **_plain(cfg.backbone.get("kwargs")),
    )
    if family == "dynamicrafter":
        from camvid.models.dynamicrafter import build_dynamicrafter_method as build
    elif family == "animatediff":
        from camvid.models.animatediff import build_animatediff_method as build
    else:
        raise ValueError(f"backbone.family={family}: unknown; choose dynamicrafter or animatediff")
    model = build(**kwargs)

    pretrained = cfg.get("pretrained")
    if pretrained:
        path = Path(str(pretrained))
        if not path.exists():
            raise FileNotFoundError(
                f"pretrained weights not found: {path} (backbone={cfg.backbone.size} {family}). "
                f"Download them from {WEIGHT_SOURCES[family]} and place them there, set "
                f"CAMVID_WEIGHTS / pretrained=PATH, or use backbone=tiny_{family} to train from scratch."
            )
        model.load_pretrained(path)
    return model


def trains_base(cfg: DictConfig) -> bool:
    """Whether the base model trains too.

    The papers freeze a *pretrained* base and train only the new modules. A base without pretrained
    weights (the tiny CPU backbones) is random, and its zero-initialised output layers would pass no
    gradient to the new modules, so ``model.train_base=auto`` trains everything in that case.
    """
    mode = str(cfg.model.get("train_base", "auto"))
    if mode not in ("auto", "true", "false", "True", "False"):
        raise ValueError(f"model.train_base={mode}: choose auto, true or false")
    if mode == "auto":
        return not cfg.get("pretrained")
    return mode in ("true", "True")


def set_trainable(method: VideoDiffusionModel, cfg: DictConfig) -> bool:
    """Freeze the base and unfreeze the method's new modules, or train the whole denoiser (see
    :func:`trains_base`; the conditioning encoders stay frozen). Returns whether the base trains."""
    method.freeze_base()
    full = trains_base(cfg)
    if full:
        method.requires_grad_(True)
        for encoder in method.encoder_modules():
            encoder.requires_grad_(False)
    return full
