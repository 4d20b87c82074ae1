"""One entry point from the composed config to a method: backbone family x camera method x attention."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from camvid.assets import resolve_weights
from camvid.config import check_combination
from camvid.models.base import VideoDiffusionModel

__all__ = ["build_method", "new_module_parameter_names", "set_trainable", "trains_base", "WEIGHT_SOURCES"]

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


# The masks the released method checkpoints were trained with (issue 7): CVD's soft additive band
# and CamI2V's mask grid (cell centres half a pixel from ours). ``released_masks=auto`` switches
# them on whenever that method's released checkpoint is loaded with method_ckpt=.
RELEASED_MASKS = {"cvd": {"band": "soft"}, "cami2v": {"grid": "cami2v_release"}}


def released_mask_kwargs(model: str, method_ckpt, mode="auto") -> dict:
    mode = str(mode)
    if mode not in ("auto", "true", "false", "True", "False"):
        raise ValueError(f"released_masks={mode}: choose auto, true or false")
    if mode in ("false", "False") or (mode == "auto" and not method_ckpt):
        return {}
    from camvid.models.camera.context import CONTEXT_KWARGS

    wanted = RELEASED_MASKS.get(model, {})
    missing = [k for k in wanted if k not in CONTEXT_KWARGS]
    if missing:
        import warnings

        warnings.warn(f"released_masks: this camvid.attention has no {missing} option yet; the masks of the "
                      f"released {model} checkpoint are not reproduced", stacklevel=2)
    return {k: v for k, v in wanted.items() if k in CONTEXT_KWARGS}


def build_method(cfg: DictConfig) -> VideoDiffusionModel:
    """Instantiate the method selected by ``cfg.model`` on ``cfg.backbone`` with ``cfg.attn``."""
    check_combination(cfg)
    if cfg.model.get("baseline"):  # a released system, sampled only (camvid.baselines)
        from camvid.baselines import build_baseline

        return build_baseline(cfg)
    family = cfg.backbone.family
    attn_kwargs = _attn_kwargs(cfg.attn)
    attn_kwargs.update(released_mask_kwargs(str(cfg.model.name), cfg.get("method_ckpt"),
                                            cfg.get("released_masks", "auto")))
    kwargs = dict(
        method=cfg.model.name,
        size=str(cfg.backbone.size),
        attn=cfg.attn.variant,
        attn_kwargs=attn_kwargs,
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
    if cfg.model.get("plucker") is False:  # CamI2V Table 2 row 5: epipolar attention without Plücker
        if family != "dynamicrafter" or cfg.model.name != "cami2v":
            raise ValueError(f"model.plucker=false is CamI2V on DynamiCrafter without its Plücker embedding; got "
                             f"model={cfg.model.name} on a {family} backbone")
        kwargs["plucker"] = False
    pretrained = resolve_weights(cfg.get("pretrained"))
    method_ckpt = cfg.get("method_ckpt") or None
    if family == "dynamicrafter":
        # the builder checks both files first, builds the pretrained trunk on meta and loads it
        return build(**kwargs, pretrained=_existing(pretrained, family, cfg), method_ckpt=method_ckpt)
    if method_ckpt and not Path(str(method_ckpt)).is_file():
        raise FileNotFoundError(f"method_ckpt={method_ckpt}: file not found ({WEIGHT_SOURCES[family]})")
    # the builder checks the folder first, builds the loaded parts on meta and materialises them by the load
    return build(**kwargs, pretrained=_existing(pretrained, family, cfg), method_ckpt=method_ckpt)


def _existing(pretrained, family: str, cfg: DictConfig) -> str | None:
    if not pretrained:
        return None
    path = Path(str(pretrained))
    if not path.exists():
        raise FileNotFoundError(
            f"pretrained weights not found: {path} (backbone={cfg.backbone.size} {family}). "
            f"Download them from {WEIGHT_SOURCES[family]} and place them there, set "
            f"CAMVID_WEIGHTS / pretrained=PATH, or use backbone=tiny_{family} to train from scratch."
        )
    return str(path)


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


def new_module_parameter_names(method: VideoDiffusionModel) -> set[str]:
    """The names of the method's own new parameters (what ``freeze_base`` leaves trainable: camera
    encoders, epipolar / cross-video attention, ...), whatever trains now; ``requires_grad`` is left as
    it was."""
    was = {name: p.requires_grad for name, p in method.named_parameters()}
    method.freeze_base()
    names = {name for name, p in method.named_parameters() if p.requires_grad}
    for name, p in method.named_parameters():
        p.requires_grad_(was[name])
    return names
