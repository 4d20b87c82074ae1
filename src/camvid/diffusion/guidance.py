"""Classifier-free guidance, plain and CamI2V's multi-condition form, in one batched model call.

CamI2V (eq. 8), with c_it the image and text together:
    e = e(c_cam, 0) + s_it (e(c_cam, c_it) - e(c_cam, 0)) + s_cam (e(c_cam, c_it) - e(0, c_it))
Plain CFG is the same expression with ``camera_scale = 0``; which conditions the unconditional
branch drops is ``uncond_drops``: ("text", "image") for the DynamiCrafter family (DynamiCrafter's
``uc`` is the empty prompt plus the zero-image embedding; its concatenated frame latent stays),
("text",) for text-to-video methods (AnimateDiff / CameraCtrl / CVD).

CamI2V's code scales the camera term by ``camera_cfg - 1``; this module uses the paper's
``s_cam``, so ``camera_scale = camera_cfg - 1`` (``camera_cfg = 1`` is no camera guidance).
Guidance acts on the raw model output (eps or v), as DynamiCrafter's sampler does; the combination
is affine with weights summing to one, so it is the same in eps or v space. ``rescale`` is
DynamiCrafter's ``guidance_rescale`` (Lin et al. 2024, sec. 3.4), relative to the fully
conditional output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from camvid.models.base import Conditions, VideoDiffusionModel

CONDITION_NAMES = ("text", "image", "camera")
CAMERA_SCALE_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Guidance:
    """Guidance settings. Defaults mean "no guidance": one conditional forward pass."""

    scale: float = 1.0  # s_it (s_text for text-to-video)
    camera_scale: float = 0.0  # s_cam of CamI2V eq. 8
    uncond_drops: tuple[str, ...] = ("text", "image")
    rescale: float = 0.0  # DynamiCrafter guidance_rescale, 0 = off
    camera_scale_schedule: str = "constant"  # CamI2V's camera_cfg_scheduler
    num_train_timesteps: int = 1000  # for the cosine camera schedule

    def __post_init__(self):
        unknown = [c for c in self.uncond_drops if c not in CONDITION_NAMES]
        if unknown or not self.uncond_drops:
            raise ValueError(f"guidance uncond_drops must be a non-empty subset of {CONDITION_NAMES}, "
                             f"got {self.uncond_drops}")
        if "camera" in self.uncond_drops and self.camera_scale != 0:
            raise ValueError("guidance camera_scale needs the camera kept in the unconditional branch; "
                             "remove 'camera' from uncond_drops")
        if self.camera_scale_schedule not in CAMERA_SCALE_SCHEDULES:
            raise ValueError(f"unknown camera_scale_schedule {self.camera_scale_schedule!r}; "
                             f"expected one of {CAMERA_SCALE_SCHEDULES}")
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"guidance rescale must be in [0, 1], got {self.rescale}")

    @classmethod
    def from_config(cls, cfg: Guidance | Mapping | None) -> Guidance:
        if cfg is None:
            return cls()
        if isinstance(cfg, Guidance):
            return cfg
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown guidance option(s) {unknown}; expected some of {sorted(names)}")
        kwargs = dict(cfg)
        if "uncond_drops" in kwargs:
            kwargs["uncond_drops"] = tuple(kwargs["uncond_drops"])
        return cls(**kwargs)

    def branches(self) -> list[str]:
        """The condition combinations needed, in batch order."""
        out = ["cond"]
        if self.scale != 1.0:
            out.append("uncond")
        if self.camera_scale != 0.0:
            out.append("no_camera")
        return out


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Match the per-sample std of the guided output to the conditional one, blended by ``rescale``."""
    dims = list(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    return rescale * guided * (std_cond / std_guided) + (1 - rescale) * guided


def _camera_weight(guidance: Guidance, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    if guidance.camera_scale_schedule == "constant":
        return 1.0
    # CamI2V's "cosine": full weight at high noise, fading to 0 at t = 0
    w = torch.cos((1.0 - t.double() / (guidance.num_train_timesteps - 1)) * math.pi / 2)
    return w.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def guided_output(model: VideoDiffusionModel, z_t: torch.Tensor, t: torch.Tensor, cond: Conditions,
                  guidance: Guidance | Mapping | None = None) -> torch.Tensor:
    """Guided model output (the model's parameterization), from ONE ``model.denoise`` call on the
    batch stacked as [cond; uncond; no_camera] (only the branches whose scale is active)."""
    guidance = Guidance.from_config(guidance)
    branches = guidance.branches()
    n, B = len(branches), z_t.shape[0]
    if t.shape != (B,):
        raise ValueError(f"timesteps must have shape ({B},), got {tuple(t.shape)}")

    stacked = cond.repeat(n) if n > 1 else cond
    drops = {name: torch.zeros(n * B, dtype=torch.bool, device=z_t.device) for name in CONDITION_NAMES}
    for k, branch in enumerate(branches):
        dropped = guidance.uncond_drops if branch == "uncond" else ("camera",) if branch == "no_camera" else ()
        for name in dropped:
            drops[name][k * B:(k + 1) * B] = True
    if n > 1:
        stacked = stacked.with_drops(**drops)
        out = model.denoise(torch.cat([z_t] * n), torch.cat([t] * n), stacked)
    else:
        out = model.denoise(z_t, t, stacked)
    if out.shape != (n * B, *z_t.shape[1:]):
        raise ValueError(f"model.denoise returned shape {tuple(out.shape)} for {n} stacked copies of "
                         f"input {tuple(z_t.shape)}")
    parts = dict(zip(branches, out.chunk(n)))

    e_cond = parts["cond"]
    guided = e_cond
    if "uncond" in parts:
        guided = parts["uncond"] + guidance.scale * (e_cond - parts["uncond"])
    if "no_camera" in parts:
        weight = _camera_weight(guidance, t, e_cond)
        guided = guided + guidance.camera_scale * weight * (e_cond - parts["no_camera"])
    if guidance.rescale > 0 and n > 1:
        guided = rescale_guidance(guided, e_cond, guidance.rescale)
    return guided
