"""Discrete noise schedules and the closed-form relations between x0, eps, v and z_t.

Naming follows diffusers: ``"scaled_linear"`` is the schedule that LDM / Stable Diffusion /
DynamiCrafter configs call ``"linear"`` (betas = linspace(sqrt(b0), sqrt(b1))^2), while ``"linear"``
is a plain linspace of betas (AnimateDiff's and CameraCtrl's diffusers configs use this one).

All relations are written for variance-preserving diffusion:
    z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,    v = sqrt(a_t) eps - sqrt(1 - a_t) x0
with ``a_t = alphas_cumprod[t]``. Schedules are computed in float64; every helper gathers the
coefficients in float64 and casts to the dtype of its tensor argument only at the end.
"""

from __future__ import annotations

import torch

BETA_SCHEDULES = ("scaled_linear", "linear")
# what the denoiser outputs: the noise (LDM / DynamiCrafter 256), v (DynamiCrafter 512), or the clean
# latent itself (x0: a tiny pixel-space model that is still learning makes blur, not speckle)
PARAMETERIZATIONS = ("eps", "v", "x0")


def make_betas(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> torch.Tensor:
    """Betas (float64, length ``num_train_timesteps``); defaults are DynamiCrafter's / SD's."""
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected one of {BETA_SCHEDULES}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alphas_cumprod) so that the last step has
    exactly zero signal (SNR 0) while the first step keeps its value."""
    sqrt_ab = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def make_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    zero_terminal_snr: bool = False,
) -> torch.Tensor:
    """``alphas_cumprod`` (float64) of the training schedule; what methods register as a buffer."""
    betas = make_betas(num_train_timesteps, beta_schedule, beta_start, beta_end)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def dynamic_rescale_scales(num_train_timesteps: int = 1000, base_scale: float = 0.7,
                           turning_step: int = 400) -> torch.Tensor:
    """DynamiCrafter's ``scale_arr`` (its 512/1024 models): the clean latent is multiplied by
    ``scale[t]`` before noising, falling linearly from 1 to ``base_scale`` over ``turning_step`` steps."""
    if not 0 < turning_step <= num_train_timesteps:
        raise ValueError(f"turning_step must be in (0, {num_train_timesteps}], got {turning_step}")
    # built on the CPU explicitly: under an enclosing ``torch.device("meta")`` context torch.linspace
    # has been seen to come out on the CPU while torch.full follows the context, and cat then fails
    ramp = torch.linspace(1.0, base_scale, turning_step, dtype=torch.float64, device="cpu")
    flat = torch.full((num_train_timesteps - turning_step,), base_scale, dtype=torch.float64, device="cpu")
    return torch.cat([ramp, flat]).to(torch.get_default_device())


def check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")


def _coef(alphas_cumprod: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod[t] in float64, shaped to broadcast against ``like`` (batch first)."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long()
    a = alphas_cumprod.double()[t]
    if a.ndim == 0:
        return a.to(like.device)
    if a.shape[0] != like.shape[0]:
        raise ValueError(f"timesteps have batch size {a.shape[0]} but the tensor has {like.shape[0]}")
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like.device)


def q_sample(x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion: z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    a = _coef(alphas_cumprod, t, x0)
    return (a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()).to(x0.dtype)


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int,
                  alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = _coef(alphas_cumprod, t, x0)
    return (a.sqrt() * eps.double() - (1 - a).sqrt() * x0.double()).to(x0.dtype)


def x0_from_eps(z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int,
                alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Undefined where a_t = 0 (zero-terminal-SNR last step): use v-parameterization there."""
    a = _coef(alphas_cumprod, t, z_t)
    return ((z_t.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()).to(z_t.dtype)


def eps_from_x0(z_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int,
                alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Undefined where a_t = 1 (no noise); the schedules here never reach it."""
    a = _coef(alphas_cumprod, t, z_t)
    return ((z_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).to(z_t.dtype)


def x0_from_v(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | int,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = _coef(alphas_cumprod, t, z_t)
    return (a.sqrt() * z_t.double() - (1 - a).sqrt() * v.double()).to(z_t.dtype)


def eps_from_v(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | int,
               alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = _coef(alphas_cumprod, t, z_t)
    return ((1 - a).sqrt() * z_t.double() + a.sqrt() * v.double()).to(z_t.dtype)


def predict_x0_eps(output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor | int,
                   alphas_cumprod: torch.Tensor, parameterization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a model output of the given parameterization."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return x0_from_eps(z_t, output, t, alphas_cumprod), output
    if parameterization == "x0":
        return output, eps_from_x0(z_t, output, t, alphas_cumprod)
    return x0_from_v(z_t, output, t, alphas_cumprod), eps_from_v(z_t, output, t, alphas_cumprod)


def training_target(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                    alphas_cumprod: torch.Tensor, parameterization: str) -> torch.Tensor:
    """What the denoiser regresses: eps itself, v, or x0 itself."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    return v_from_x0_eps(x0, eps, t, alphas_cumprod)
