"""Loading official DynamiCrafter / CamI2V-family weights into ``DynamiCrafterI2V``.

Our sub-module names equal the official ones, so most keys load unchanged. Handled here:

* Lightning ``.ckpt`` files (``{"state_dict": ...}``), plain ``.pt``/``.pth`` dicts and
  ``.safetensors`` files;
* the old name ``model.diffusion_model.framestride_embed.*`` of the 256 DynamiCrafter release
  (renamed to ``fps_embedding``, the rule of CamI2V's loader);
* the 9 schedule buffers and ``scale_arr`` (ours are derived from the configuration) are dropped;
* checkpoints that hold only a subset: a base DynamiCrafter checkpoint loads into a camera method
  (its new camera modules keep their no-op initialisation), and a trainable-only camera checkpoint
  (as CamI2V releases them) loads over an already loaded base.

Every key that is loaded must exist in the model with the same shape (otherwise ValueError naming
it). Encoder weights (``first_stage_model``/``cond_stage_model``/``embedder``) load only when the
model's encoder has exactly that key set (the lvdm VAE and OpenCLIP towers do; the tiny CPU
encoders do not and are reported as skipped).
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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (or a Lightning checkpoint with 'state_dict')")
    return state


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key in SCHEDULE_KEYS:
            continue
        out[key.replace("model.diffusion_model.framestride_embed.", "model.diffusion_model.fps_embedding.")] = value
    return out


def load_dynamicrafter_weights(model, path: str | Path) -> dict[str, int]:
    """Load ``path`` into ``model``; returns the number of tensors loaded per top-level module and
    ``skipped:<prefix>`` counts for encoder weights whose layout differs from the model's."""
    state = normalise_keys(read_state_dict(Path(path)))
    own = model.state_dict()
    unknown = sorted(k for k in state if not k.startswith(TRAINED_PREFIXES + ENCODER_PREFIXES))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} keys belong to no DynamiCrafter module, e.g. {unknown[:3]}")
    load, report = {}, {}
    for prefix in ENCODER_PREFIXES:
        theirs = {k for k in state if k.startswith(prefix)}
        ours = {k for k in own if k.startswith(prefix)}
        if theirs and theirs != ours:
            report[f"skipped:{prefix[:-1]}"] = len(theirs)
            for k in theirs:
                state.pop(k)
    for key, value in state.items():
        if key not in own:
            raise ValueError(f"{path}: key {key} does not exist in this model "
                             f"(method={model.camera or 'dynamicrafter'}); wrong checkpoint for the method?")
        if tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}")
        load[key] = value
        top = key.split(".", 1)[0]
        report[top] = report.get(top, 0) + 1
    unet_keys = [k for k in load if k.startswith("model.diffusion_model.")]
    if unet_keys:
        base_keys = {k for k in own if k.startswith("model.diffusion_model.") and not _is_camera_key(k)}
        has_base = any(k in base_keys for k in unet_keys)
        missing = sorted(base_keys - set(unet_keys))
        if has_base and missing:
            raise ValueError(f"{path}: the checkpoint has UNet weights but lacks {len(missing)} of them, "
                             f"e.g. {missing[:3]}")
    model.load_state_dict(load, strict=False)
    return report


def _is_camera_key(key: str) -> bool:
    return any(f".{name}." in key for name in ("cc_projection", "pluker_projection", "epipolar"))
