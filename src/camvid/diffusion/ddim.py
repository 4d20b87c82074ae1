"""DDIM (Song et al. 2021): timestep selection, one update step, and the denoising loop.

Timestep spacings (``T`` training steps, ``S`` sampling steps; all returned in descending order):
    uniform   DynamiCrafter / LDM ``make_ddim_timesteps("uniform")``: ``range(0, T, T // S) + 1``.
              When ``S`` does not divide ``T`` this yields *more* than ``S`` steps, exactly as the
              original code does (e.g. S=30 gives 31 steps); 25 and 50 are exact.
    leading   diffusers: ``arange(S) * (T // S) + steps_offset`` (``uniform`` == ``leading`` with
              ``steps_offset=1`` whenever ``S`` divides ``T``).
    trailing  diffusers ``trailing`` == DynamiCrafter ``uniform_trailing``: ``round(arange(T, 0, -T/S)) - 1``,
              starts at ``T - 1`` (needed with zero terminal SNR; CamI2V's logging configs use it).
    linspace  diffusers: ``round(linspace(0, T - 1, S))``.

The "previous" timestep of a step is the next one in the list (DynamiCrafter). After the last step
``alpha_prev`` is ``alphas_cumprod[0]`` (DynamiCrafter, SD's ``set_alpha_to_one=False``) or 1
(``set_alpha_to_one=True``, the last step then returns the predicted x0 exactly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from camvid.diffusion.schedule import check_parameterization

TIMESTEP_SPACINGS = ("uniform", "leading", "trailing", "linspace")


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, spacing: str = "uniform",
                   steps_offset: int = 1) -> torch.Tensor:
    """Sampling timesteps, descending, as a long tensor."""
    if not 0 < num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    T, S = num_train_timesteps, num_steps
    if spacing == "uniform":
        ts = np.arange(0, T, T // S) + 1
    elif spacing == "leading":
        ts = np.arange(S) * (T // S) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {TIMESTEP_SPACINGS}")
    ts = np.unique(ts)[::-1].copy()
    if ts[0] >= T or ts[-1] < 0:
        raise ValueError(f"spacing {spacing!r} with num_steps={S}, steps_offset={steps_offset} leaves [0, {T}): "
                         f"{ts.tolist()}; pick num_steps dividing {T} or spacing 'leading'/'trailing'")
    return torch.from_numpy(ts).long()


@dataclass
class DDIMSchedule:
    """Per-step coefficients of one DDIM run (float64)."""

    timesteps: torch.Tensor  # (S,) long, descending
    alphas: torch.Tensor  # (S,) alphas_cumprod at each timestep
    alphas_prev: torch.Tensor  # (S,) alphas_cumprod at the step each update lands on
    scales: torch.Tensor | None = None  # DynamiCrafter dynamic rescale at each timestep
    scales_prev: torch.Tensor | None = None

    @classmethod
    def create(cls, alphas_cumprod: torch.Tensor, num_steps: int, *, spacing: str = "uniform",
               steps_offset: int = 1, set_alpha_to_one: bool = False,
               scale_arr: torch.Tensor | None = None) -> DDIMSchedule:
        ac = alphas_cumprod.detach().double().cpu()
        ts = ddim_timesteps(num_steps, len(ac), spacing, steps_offset)
        final = torch.ones((), dtype=torch.float64) if set_alpha_to_one else ac[0]
        alphas = ac[ts]
        alphas_prev = torch.cat([alphas[1:], final.reshape(1)])
        scales = scales_prev = None
        if scale_arr is not None:
            sa = scale_arr.detach().double().cpu()
            if len(sa) != len(ac):
                raise ValueError(f"scale_arr has {len(sa)} entries, alphas_cumprod {len(ac)}")
            scales = sa[ts]
            scales_prev = torch.cat([scales[1:], sa[:1]])
        return cls(ts, alphas, alphas_prev, scales, scales_prev)

    def __len__(self) -> int:
        return len(self.timesteps)

    def sigma(self, i: int, eta: float) -> torch.Tensor:
        a, ap = self.alphas[i], self.alphas_prev[i]
        return eta * ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt()


def ddim_step(z_t: torch.Tensor, output: torch.Tensor, schedule: DDIMSchedule, i: int, *,
              parameterization: str, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One update from ``schedule.timesteps[i]`` to the next; returns (z_prev, predicted x0)."""
    check_parameterization(parameterization)
    a, ap = schedule.alphas[i], schedule.alphas_prev[i]
    z = z_t.double()
    out = output.double()
    if parameterization == "eps":
        if a <= 0:
            raise ValueError("eps-parameterization cannot sample from a timestep with alphas_cumprod = 0 "
                             "(zero terminal SNR); use v-parameterization or spacing='leading'/'uniform'")
        eps = out
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
    elif parameterization == "x0":
        x0 = out
        eps = (z - a.sqrt() * x0) / (1 - a).sqrt()
    else:
        x0 = a.sqrt() * z - (1 - a).sqrt() * out
        eps = (1 - a).sqrt() * z + a.sqrt() * out
    if schedule.scales is not None:
        # DynamiCrafter's dynamic rescale: the clean latent was trained at scale[t]; move it to
        # scale[t_prev] while the noise direction keeps the model's own eps.
        x0 = x0 * (schedule.scales_prev[i] / schedule.scales[i])
    sigma = schedule.sigma(i, eta) if eta > 0 else torch.zeros((), dtype=torch.float64)
    z_prev = ap.sqrt() * x0 + (1 - ap - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError(f"eta={eta} > 0 needs a noise tensor")
        z_prev = z_prev + sigma * noise.double()
    return z_prev.to(z_t.dtype), x0.to(z_t.dtype)


def renoise(z_prev: torch.Tensor, schedule: DDIMSchedule, i: int, noise: torch.Tensor) -> torch.Tensor:
    """Take a sample at ``alphas_prev[i]`` back to ``alphas[i]`` (q(z_t | z_prev)); the recurrent
    denoising of Bansal et al. that CVD's Algorithm 1 uses."""
    ratio = schedule.alphas[i] / schedule.alphas_prev[i]
    return (ratio.sqrt() * z_prev.double() + (1 - ratio).sqrt() * noise.double()).to(z_prev.dtype)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
          dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise drawn on the generator's own device in float32, so a seed gives the same
    numbers whatever device or dtype the model runs in."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_sample(predict: Predictor, z_T: torch.Tensor, schedule: DDIMSchedule, *, parameterization: str,
                eta: float = 0.0, generator: torch.Generator | None = None, recurrent_steps: int = 1,
                callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the DDIM loop. ``predict(z_t, t)`` returns the (guided) model output for the whole batch,
    ``t`` being a (B,) long tensor. ``recurrent_steps`` R > 1 repeats every step but the last R times,
    re-noising in between (CVD, following its official code, does not recur on the final step)."""
    if recurrent_steps < 1:
        raise ValueError(f"recurrent_steps must be >= 1, got {recurrent_steps}")
    z = z_T
    batch = z.shape[0]
    for i, t in enumerate(schedule.timesteps.tolist()):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=z.device)
        repeats = recurrent_steps if i < len(schedule) - 1 else 1
        for r in range(repeats):
            output = predict(z, t_batch)
            noise = randn(tuple(z.shape), generator, z.device, z.dtype) if eta > 0 else None
            z_prev, x0 = ddim_step(z, output, schedule, i, parameterization=parameterization, eta=eta,
                                   noise=noise)
            if r < repeats - 1:
                z = renoise(z_prev, schedule, i, randn(tuple(z.shape), generator, z.device, z.dtype))
            else:
                z = z_prev
        if callback is not None:
            callback(i, z, x0)
    return z


def diffusers_ddim_scheduler(alphas_cumprod_config: dict, *, num_steps: int, spacing: str = "uniform",
                             steps_offset: int = 1, set_alpha_to_one: bool = False,
                             parameterization: str = "eps"):
    """The diffusers ``DDIMScheduler`` that takes the same steps as :class:`DDIMSchedule` (for
    pipelines built on diffusers, and as an independent check of this module).

    ``alphas_cumprod_config`` holds the arguments of
    :func:`camvid.diffusion.schedule.make_alphas_cumprod`. ``uniform`` maps to diffusers' ``leading``
    with ``steps_offset=1``; the two agree whenever ``num_steps`` divides the training length.
    """
    from diffusers import DDIMScheduler

    check_parameterization(parameterization)
    T = int(alphas_cumprod_config.get("num_train_timesteps", 1000))
    if spacing == "uniform":
        if T % num_steps:
            raise ValueError(f"spacing 'uniform' has no diffusers equivalent when num_steps={num_steps} "
                             f"does not divide {T}")
        spacing, steps_offset = "leading", 1
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {TIMESTEP_SPACINGS}")
    scheduler = DDIMScheduler(
        num_train_timesteps=T,
        beta_start=float(alphas_cumprod_config.get("beta_start", 0.00085)),
        beta_end=float(alphas_cumprod_config.get("beta_end", 0.012)),
        beta_schedule=alphas_cumprod_config.get("beta_schedule", "scaled_linear"),
        rescale_betas_zero_snr=bool(alphas_cumprod_config.get("zero_terminal_snr", False)),
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        steps_offset=steps_offset,
        prediction_type={"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[parameterization],
        timestep_spacing=spacing,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler
