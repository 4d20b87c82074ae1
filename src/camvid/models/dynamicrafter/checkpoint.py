"""Loading official DynamiCrafter / CamI2V-family weights into ``DynamiCrafterI2V``.

Our sub-module names equal the official ones for the UNet, the image projector and the camera
modules, so those keys load unchanged. Handled here:

* Lightning ``.ckpt`` files (``{"state_dict": ...}``), plain ``.pt``/``.pth`` dicts (also under
  ``"module"``) and ``.safetensors`` files; ``.ckpt``/``.pt`` are memory-mapped, so reading a file
  and checking its keys and shapes allocates nothing;
* the old name ``model.diffusion_model.framestride_embed.*`` of the 256 DynamiCrafter release
  (renamed to ``fps_embedding``, the rule of CamI2V's loader);
* the schedule buffers and ``scale_arr`` (ours are derived from the configuration) are dropped;
* the encoders: ``first_stage_model.*`` (LDM VAE -> diffusers, :mod:`camvid.models.ldm_vae`),
  ``cond_stage_model.*`` and ``embedder.*`` (OpenCLIP -> transformers, :mod:`camvid.models.openclip`)
  are converted by the encoder modules themselves, strictly. Encoders without an official layout
  (the tiny CPU encoders) cannot take official weights; such keys are reported as skipped.

Two kinds of file (``kind``):

* ``"base"`` (``pretrained=``): a DynamiCrafter ``model.ckpt`` (or a full CamI2V-repo checkpoint).
  Every base parameter (UNet, VAE, both encoders, image projector) must be in it; camera modules
  the file lacks keep their no-op initialisation.
* ``"method"`` (``method_ckpt=``): a camera method's checkpoint over a loaded base (CamI2V's
  ``256_cami2v.pt`` etc. hold the trainable modules only); every module of the method must be in it.
* ``"auto"``: either (``model.load_pretrained``).

Any key the model lacks, a wrong shape or a missing required key raises ValueError naming the file,
what the file looks like, what was expected and the first mismatched keys. Tensors are cast to the
model's dtype (releases are often fp16); parameters built on ``meta`` are materialised by assignment.
"""

from __future__ import annotations

from pathlib import Path

import torch

SCHEDULE_KEYS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2", "scale_arr", "logvar"}
TRAINED_PREFIXES = ("model.diffusion_model.", "image_proj_model.", "pose_encoder.")
ENCODER_PREFIXES = ("first_stage_model.", "cond_stage_model.", "embedder.")
KINDS = ("auto", "base", "method")
CAMERA_MODULES = ("cc_projection", "pluker_projection", "epipolar", "epi_modules")


def read_raw(path: Path):
    """The object stored in ``path`` (memory-mapped for torch zip files: nothing is read yet)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
        return torch.load(str(path), map_location="cpu", weights_only=True)


def unwrap(raw, path: Path) -> dict[str, torch.Tensor]:
    state = raw
    for wrapper in ("state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: the file looks like {describe(raw)}; expected a DynamiCrafter model.ckpt or a "
                         "camera-method checkpoint (a state dict, or a Lightning checkpoint with 'state_dict')")
    return state


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return unwrap(read_raw(Path(path)), Path(path))


def describe(raw) -> str:
    """What a checkpoint looks like, for error messages."""
    if not isinstance(raw, dict):
        return f"a {type(raw).__name__}, not a dict of tensors"
    if "pose_encoder_state_dict" in raw or "attention_processor_state_dict" in raw:
        return "CameraCtrl's AnimateDiff checkpoint (pose_encoder_state_dict / attention_processor_state_dict)"
    if "unet_trainable_dict" in raw:
        return "a CVD checkpoint (unet_trainable_dict, AnimateDiff epi_modules)"
    state = raw
    for wrapper in ("state_dict", "module"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    keys = [k for k in state if isinstance(k, str)]
    if not keys:
        return "an empty or non-tensor dict"
    counts = {}
    for key in keys:
        top = key.split(".", 1)[0] if not key.startswith("model.diffusion_model.") else "model.diffusion_model"
        counts[top] = counts.get(top, 0) + 1
    parts = ", ".join(f"{k}.* ({n})" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6])
    if any(".motion_modules." in k for k in keys):
        return f"an AnimateDiff / diffusers UNet state dict ({parts})"
    if "model.diffusion_model" in counts and "first_stage_model" in counts:
        return f"a full DynamiCrafter-family checkpoint ({parts})"
    if all(k.startswith(("pose_encoder.", "model.diffusion_model.")) for k in keys) and "model.diffusion_model" in counts \
            and counts["model.diffusion_model"] < 1000:
        return f"a trainable-only camera-method checkpoint ({parts})"
    return f"a checkpoint with {parts}"


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key in SCHEDULE_KEYS:
            continue
        out[key.replace("model.diffusion_model.framestride_embed.", "model.diffusion_model.fps_embedding.")] = value
    return out


def is_camera_key(key: str) -> bool:
    return key.startswith("pose_encoder.") or any(f".{name}." in key for name in CAMERA_MODULES)


def _module_keys(model, modules) -> set[str]:
    names = set()
    for module in modules:
        for prefix, mod in model.named_modules():
            if mod is module:
                names |= {f"{prefix}.{k}" for k in module.state_dict()}
                break
    return names


def method_keys(model) -> set[str]:
    """The state-dict keys a camera-method checkpoint must provide (new modules, pose encoder and,
    for MotionCtrl, the temporal ``attn2`` it trains)."""
    if not model.camera:
        return set()
    if getattr(model, "cvd", False):
        # CVD sits on a frozen CameraCtrl: its method file is CameraCtrl's (the sync modules are optional)
        from camvid.models.camera.injection import camera_trainable_modules

        return _module_keys(model, [*camera_trainable_modules(model.unet, "cameractrl"), model.pose_encoder])
    return _module_keys(model, model.trainable_modules())


def _expected(model, kind: str) -> str:
    if kind == "method":
        return (f"a {model.camera} method checkpoint over the base (pose_encoder.* and the camera modules "
                f"{'/'.join(CAMERA_MODULES)} of model.diffusion_model)")
    return ("a DynamiCrafter model.ckpt: model.diffusion_model.* (UNet), first_stage_model.* (VAE), "
            "cond_stage_model.* (OpenCLIP text), embedder.* (OpenCLIP image), image_proj_model.*")


def _error(path, raw, model, kind: str, problem: str, keys: list[str]) -> ValueError:
    return ValueError(f"{path}: {problem}, e.g. {keys[:5]}. The file looks like {describe(raw)}; "
                      f"expected {_expected(model, kind)}.")


def _convert_encoders(model, state: dict, path, report: dict) -> dict:
    out = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIXES)}
    for prefix in ENCODER_PREFIXES:
        theirs = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not theirs:
            continue
        module = getattr(model, prefix[:-1])
        if not hasattr(module, "from_official"):
            if set(theirs) == set(module.state_dict()):  # our own layout (a tiny model's checkpoint)
                out.update({prefix + k: v for k, v in theirs.items()})
            else:  # official weights a tiny CPU encoder cannot take
                report[f"skipped:{prefix[:-1]}"] = len(theirs)
            continue
        ours, unused = module.from_official(theirs, f"{path} [{prefix}*]")
        out.update({prefix + k: v for k, v in ours.items()})
        if unused:
            report[f"unused:{prefix[:-1]}"] = len(unused)
    return out


def load_dynamicrafter_weights(model, path: str | Path, kind: str = "auto", check_only: bool = False) -> dict[str, int]:
    """Load ``path`` into ``model``; returns tensors loaded per top-level module, plus
    ``unused:<encoder>`` (OpenCLIP tensors DynamiCrafter never runs, checked and counted) and
    ``skipped:<encoder>`` (encoder weights a tiny CPU encoder cannot take). ``check_only``: every
    check, nothing copied (with a model built on ``meta`` and a memory-mapped file, nothing is read)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
    path = Path(path)
    raw = read_raw(path)
    state = normalise_keys(unwrap(raw, path))
    report: dict[str, int] = {}
    own = model.state_dict()
    unknown = sorted(k for k in state if not k.startswith(TRAINED_PREFIXES + ENCODER_PREFIXES))
    if unknown:
        raise _error(path, raw, model, kind, f"{len(unknown)} keys belong to no DynamiCrafter module", unknown)
    state = _convert_encoders(model, state, path, report)
    absent = sorted(k for k in state if k not in own)
    if absent:
        raise _error(path, raw, model, kind, f"{len(absent)} keys do not exist in this model "
                     f"(model={model.camera or 'dynamicrafter'})", absent)
    bad = [k for k in state if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise _error(path, raw, model, kind, f"{len(bad)} tensors have the wrong shape ({k}: "
                     f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)", bad)

    skipped = {p for p in ENCODER_PREFIXES if not hasattr(getattr(model, p[:-1]), "from_official")}
    base = {k for k in own if not is_camera_key(k) and not k.startswith(tuple(skipped))}
    if kind == "base":
        missing = sorted(base - set(state))
        if missing:
            raise _error(path, raw, model, kind, f"{len(missing)} base parameters are missing", missing)
    elif kind == "method":
        if not model.camera:
            raise ValueError(f"{path}: method_ckpt= is for a camera method, but model=dynamicrafter has no camera "
                             "modules; pass the file as pretrained= instead")
        missing = sorted(method_keys(model) - set(state))
        if missing:
            raise _error(path, raw, model, kind, f"{len(missing)} parameters of {model.camera} are missing", missing)
    unet = {k for k in state if k.startswith("model.diffusion_model.") and not is_camera_key(k)}
    if unet:  # a file with UNet base weights must have all of them (never half a UNet)
        missing = sorted({k for k in base if k.startswith("model.diffusion_model.")} - unet)
        if missing and kind != "method":
            raise _error(path, raw, model, kind, f"the file has UNet weights but lacks {len(missing)} of them",
                         missing)

    if not check_only:
        _assign(model, own, state)
    for key in state:
        top = key.split(".", 1)[0]
        report[top] = report.get(top, 0) + 1
    return report


def _assign(model, own: dict, state: dict) -> None:
    """Copy into real tensors; assign (materialise) where the model was built on ``meta``."""
    copy, assign = {}, {}
    for key, value in state.items():
        target = own[key]
        if target.is_floating_point():
            value = value.to(dtype=target.dtype)
        if target.is_meta:
            # own memory: never keep a memory-mapped file's storage inside the model
            assign[key] = value if value.is_meta else value.clone(memory_format=torch.contiguous_format)
        else:
            copy[key] = value
    if copy:
        model.load_state_dict(copy, strict=False)
    if assign:
        model.load_state_dict(assign, strict=False, assign=True)


def meta_tensors(model) -> list[str]:
    """Names of parameters and buffers still on ``meta`` (not materialised by a load)."""
    names = [n for n, p in model.named_parameters() if p.is_meta]
    names += [n for n, b in model.named_buffers() if b.is_meta]
    return names
