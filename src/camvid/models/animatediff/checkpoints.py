"""Loading the official AnimateDiff / CameraCtrl / CVD weights from local files.

``load_animatediff_weights(model, folder)`` reads whichever of these the folder holds (nothing is
downloaded; see ``camvid.models.registry.WEIGHT_SOURCES``):

=====================================  ==========================================================
``stable-diffusion-v1-5/unet/``        SD1.5 spatial UNet (diffusers names = ours)
``stable-diffusion-v1-5/vae/``         KL-f8 VAE (full size only)
``stable-diffusion-v1-5/text_encoder/``, ``tokenizer/``  CLIP ViT-L/14 text tower (full size only)
``v3_sd15_mm.ckpt``                    AnimateDiff v3 motion modules (official names, mapped)
``CameraCtrl.ckpt``                    ``pose_encoder_state_dict`` + ``attention_processor_state_dict``
``CVD.ckpt``                           ``unet_trainable_dict`` (the ``epi_modules``)
=====================================  ==========================================================

Each part is loaded strictly: every key the part needs must be present with its shape, and no key
of a file may be left unused; a mismatch raises ValueError naming the file and the first keys.
Values are cast to the model's dtype (released files are often fp16).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from camvid.models.animatediff.key_mapping import convert_official_state_dict

__all__ = ["load_animatediff_weights", "read_state_dict", "load_part"]

SD15_DIR = "stable-diffusion-v1-5"
MOTION_FILE = "v3_sd15_mm.ckpt"
CAMERACTRL_FILE = "CameraCtrl.ckpt"
CVD_FILE = "CVD.ckpt"
WEIGHT_SOURCES = ("huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5 (stable-diffusion-v1-5/), "
                  "huggingface.co/guoyww/animatediff (v3_sd15_mm.ckpt), huggingface.co/hehao13/CameraCtrl "
                  "(CameraCtrl.ckpt), github.com/CollaborativeVideoDiffusion/CVD (CVD.ckpt)")


def read_state_dict(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.bin`` / ``.ckpt`` file, optionally the sub-dict ``key``."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if key is not None:
        if key not in sd:
            raise ValueError(f"{path}: no {key!r} entry (has {sorted(sd)[:6]})")
        sd = sd[key]
    elif "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_part(module: nn.Module, state: dict[str, torch.Tensor], wanted: set[str], source: str) -> None:
    """Copy ``state`` into the entries ``wanted`` of ``module.state_dict()``; both sets must be equal."""
    own = module.state_dict()
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        raise ValueError(
            f"{source}: {len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected key(s) "
            f"{unexpected[:3]}"
        )
    bad = [k for k in wanted if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{source}: {k} has shape {tuple(state[k].shape)}, the model needs {tuple(own[k].shape)}")
    cast = {k: state[k].to(dtype=own[k].dtype) if own[k].is_floating_point() else state[k] for k in wanted}
    # copy into real tensors; assign (materialise) those built on ``meta``: the read (or cast) tensor
    # becomes the parameter, so the file's weights are held once
    copy = {k: v for k, v in cast.items() if not own[k].is_meta}
    assign = {k: v if v.is_contiguous() else v.contiguous() for k, v in cast.items() if own[k].is_meta}
    if copy:
        module.load_state_dict(copy, strict=False)
    if assign:
        module.load_state_dict(assign, strict=False, assign=True)


def _keys(unet: nn.Module, predicate) -> set[str]:
    return {k for k in unet.state_dict() if predicate(k)}


def _is_spatial(key: str) -> bool:
    # the method's own modules (CVD's epi_modules, CamI2V's cross_frame_modules) are in no SD1.5 file
    return ".motion_modules." not in key and ".epi_modules." not in key and ".cross_frame_modules." not in key


def _is_motion(key: str) -> bool:
    return ".motion_modules." in key and ".processor." not in key


def load_animatediff_weights(model, folder: Path) -> list[str]:
    """Load every part found under ``folder`` into ``model`` (an ``AnimateDiffT2V``); returns the parts
    loaded. A method part (CameraCtrl for camera methods, CVD for ``cvd``) that is absent is an error:
    its modules would stay at their (zero) initialisation."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"AnimateDiff weights folder not found: {folder}")
    unet = model.unet
    loaded = []
    sd15 = folder / SD15_DIR
    if sd15.is_dir():
        _load_sd15(model, sd15)
        loaded.append(SD15_DIR)
    if (folder / MOTION_FILE).is_file():
        state = convert_official_state_dict(read_state_dict(folder / MOTION_FILE))
        load_part(unet, state, _keys(unet, _is_motion), str(folder / MOTION_FILE))
        loaded.append(MOTION_FILE)
    if model.pose_adaptor is not None:
        path = folder / CAMERACTRL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{model._name()} needs {path} (CameraCtrl.ckpt from "
                                    "huggingface.co/hehao13/CameraCtrl)")
        load_cameractrl(model, path)
        loaded.append(CAMERACTRL_FILE)
    if model.sync is not None and (folder / CVD_FILE).is_file():
        # optional: without it the sync modules keep their zero initialisation (training CVD from scratch)
        load_cvd(model, folder / CVD_FILE)
        loaded.append(CVD_FILE)
    if not loaded:
        raise FileNotFoundError(
            f"no AnimateDiff weights under {folder}: expected {SD15_DIR}/, {MOTION_FILE}, {CAMERACTRL_FILE} or "
            f"{CVD_FILE} (from {WEIGHT_SOURCES})"
        )
    return loaded


def load_cameractrl(model, path: Path) -> None:
    """CameraCtrl.ckpt: the pose encoder and the ``qkv_merge`` of every motion module."""
    poses = read_state_dict(path, "pose_encoder_state_dict")
    load_part(model.pose_encoder, poses, set(model.pose_encoder.state_dict()), f"{path} [pose_encoder_state_dict]")
    merge = convert_official_state_dict(read_state_dict(path, "attention_processor_state_dict"))
    load_part(model.unet, merge, _keys(model.unet, lambda k: ".processor.qkv_merge." in k),
              f"{path} [attention_processor_state_dict]")


def load_cvd(model, path: Path) -> None:
    """CVD.ckpt: the ``epi_modules`` (``unet_trainable_dict``)."""
    state = read_state_dict(path, "unet_trainable_dict")
    wanted = {k for k, p in model.unet.named_parameters() if ".epi_modules." in k}
    load_part(model.unet, state, wanted, f"{path} [unet_trainable_dict]")


LORA_TARGETS = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}


def merge_lora(model, path: Path, scale: float = 1.0) -> int:
    """CameraCtrl's RealEstate10K image LoRA (``processor.to_{q,k,v,out}_lora.{down,up}.weight`` on
    the spatial attentions), merged into the base weights: ``W += scale * up @ down``, which is what
    the LoRA processor adds at inference. Returns the number of merged projections."""
    state = read_state_dict(path)
    state = state.get("lora_state_dict", state) if isinstance(state.get("lora_state_dict"), dict) else state
    own = dict(model.unet.named_parameters())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head, sep, tail = key.partition(".processor.")
        part = tail.split(".")  # e.g. ["to_q_lora", "down", "weight"]
        if not sep or len(part) != 3 or part[0] not in LORA_TARGETS or part[1] not in ("down", "up") \
                or part[2] != "weight":
            raise ValueError(f"{path}: {key} is not a CameraCtrl LoRA key (expected "
                             "<attention>.processor.to_{q,k,v,out}_lora.{down,up}.weight)")
        target = f"{head}.{LORA_TARGETS[part[0]]}.weight"
        if target not in own:
            raise ValueError(f"{path}: {key} targets {target}, which this UNet does not have")
        pairs.setdefault(target, {})[part[1]] = value
    with torch.no_grad():
        for target, ab in pairs.items():
            if set(ab) != {"down", "up"}:
                raise ValueError(f"{path}: LoRA of {target} lacks its {({'down', 'up'} - set(ab)).pop()} matrix")
            delta = ab["up"].float() @ ab["down"].float()
            if delta.shape != own[target].shape:
                raise ValueError(f"{path}: LoRA of {target} has shape {tuple(delta.shape)}, the weight "
                                 f"{tuple(own[target].shape)}")
            own[target].add_(scale * delta.to(own[target].dtype))
    return len(pairs)


def method_file_kind(path: Path) -> str:
    """What a released AnimateDiff-family method file is, from its keys (memory-mapped, so nothing
    large is read): ``CameraCtrl.ckpt``, ``CVD.ckpt`` or ``"lora"`` (CameraCtrl's RealEstate10K
    image LoRA). Anything else raises ValueError naming the file, its first keys and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"method_ckpt={path}: file not found (CameraCtrl.ckpt from hehao13/CameraCtrl, "
                                "CVD.ckpt from CollaborativeVideoDiffusion/CVD, or CameraCtrl's RealEstate10K LoRA)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = {k: None for k in f.keys()}
    else:
        raw = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if isinstance(raw, dict) and "pose_encoder_state_dict" in raw:
        return CAMERACTRL_FILE
    if isinstance(raw, dict) and "unet_trainable_dict" in raw:
        return CVD_FILE
    keys = list(raw.get("lora_state_dict", raw)) if isinstance(raw, dict) else []
    if keys and all(isinstance(k, str) and "_lora." in k for k in keys):
        return "lora"
    raise ValueError(f"{path}: not an AnimateDiff method file; it has keys {keys[:4]}. Expected CameraCtrl.ckpt "
                     "(pose_encoder_state_dict), CVD.ckpt (unet_trainable_dict) or CameraCtrl's RealEstate10K LoRA "
                     "(*.processor.to_q_lora.down.weight ...)")


def check_method_file(path: Path, method: str) -> str:
    """The kind of ``path`` (:func:`method_file_kind`), checked against ``model=method`` before anything
    is built: CameraCtrl.ckpt needs the CameraCtrl modules (cameractrl, cami2v, cvd), CVD.ckpt needs cvd;
    the image LoRA (spatial attention of the SD1.5 UNet) goes on any model."""
    kind = method_file_kind(path)
    if kind == CVD_FILE and method != "cvd":
        raise ValueError(f"{path} is CVD.ckpt but model={method} has no CVD sync modules; use model=cvd")
    if kind == CAMERACTRL_FILE and method not in ("cameractrl", "cami2v", "cvd"):
        raise ValueError(f"{path} is CameraCtrl.ckpt but model={method} has no CameraCtrl modules; use "
                         "model=cameractrl, cami2v or cvd")
    return kind


def load_method_file(model, path: Path) -> str:
    """A released method file over a loaded base, recognised by its content: CameraCtrl.ckpt,
    CVD.ckpt or CameraCtrl's LoRA. Returns which one it was."""
    path = Path(path)
    kind = check_method_file(path, model._name())
    if kind == CAMERACTRL_FILE:
        load_cameractrl(model, path)
    elif kind == CVD_FILE:
        load_cvd(model, path)
    else:
        merge_lora(model, path)
    return kind


def _load_sd15(model, folder: Path) -> None:
    unet_file = _diffusers_weights(folder / "unet")
    load_part(model.unet, read_state_dict(unet_file), _keys(model.unet, _is_spatial), str(unet_file))
    first_stage, text = model.first_stage, model.text_encoder
    if hasattr(first_stage, "vae"):
        vae_file = _diffusers_weights(folder / "vae")
        load_part(first_stage.vae, read_state_dict(vae_file), set(first_stage.vae.state_dict()), str(vae_file))
    if hasattr(text, "text_model"):
        te_file = _diffusers_weights(folder / "text_encoder", stem="model")
        state = read_state_dict(te_file)
        # transformers checkpoints of older versions carry a position_ids buffer we do not keep
        state.pop("text_model.embeddings.position_ids", None)
        load_part(text.text_model, state, set(text.text_model.state_dict()), str(te_file))
        text.load_tokenizer(folder / "tokenizer")


def _diffusers_weights(folder: Path, stem: str = "diffusion_pytorch_model") -> Path:
    for name in (f"{stem}.safetensors", f"{stem}.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no weights in {folder} (expected {stem}.safetensors or .bin, as in the "
                            "huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5 folder)")
