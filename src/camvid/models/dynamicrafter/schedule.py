"""Training noise schedules of the DynamiCrafter family (lvdm ``register_schedule``).

256 model: "linear" schedule of lvdm, which is linear in sqrt(beta) from 0.00085 to 0.012 over 1000
steps (the Stable Diffusion "scaled linear"), eps-prediction. 512 model: the same betas rescaled
to zero terminal SNR (Lin et al. 2024, Alg. 1), v-prediction, plus "dynamic rescale": the clean
latent is multiplied by ``scale_arr[t]`` (1 -> ``base_scale`` over the first ``turning_step``
steps, then constant) before noising. Samplers are built on these buffers in ``camvid.diffusion``.
"""

from __future__ import annotations

import torch


def linear_betas(num_steps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> torch.Tensor:
    return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_steps, dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has alpha_bar = 0 and the first is unchanged."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab ** 2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def make_alphas_cumprod(num_steps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012,
                        zero_terminal_snr: bool = False) -> torch.Tensor:
    """(num_steps,) float32 cumulative product of alphas."""
    betas = linear_betas(num_steps, linear_start, linear_end)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0).float()


def dynamic_rescale_scales(num_steps: int = 1000, base_scale: float = 0.7, turning_step: int = 400) -> torch.Tensor:
    """lvdm ``scale_arr``: ``linspace(1, base_scale, turning_step)`` then ``num_steps`` x base_scale
    (length ``turning_step + num_steps``, only the first ``num_steps`` entries are ever indexed)."""
    return torch.cat([torch.linspace(1.0, base_scale, turning_step, dtype=torch.float64),
                      torch.full((num_steps,), base_scale, dtype=torch.float64)]).float()
