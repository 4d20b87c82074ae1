"""The one sampler: guided DDIM over any :class:`VideoDiffusionModel`, from a batch or ready conditions.

How an image-to-video method keeps its conditioning frame (concatenated latent, replaced frame,
...) lives inside ``model.denoise``; the sampler only passes the conditions along.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from camvid.diffusion.ddim import DDIMSchedule, ddim_sample, randn
from camvid.diffusion.guidance import Guidance, guided_output
from camvid.models.base import Conditions, VideoDiffusionModel


def model_device_dtype(model: VideoDiffusionModel) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return model.alphas_cumprod.device, torch.float32


def make_ddim_schedule(model: VideoDiffusionModel, num_steps: int, *, spacing: str = "uniform",
                       steps_offset: int = 1, set_alpha_to_one: bool = False) -> DDIMSchedule:
    return DDIMSchedule.create(model.alphas_cumprod, num_steps, spacing=spacing, steps_offset=steps_offset,
                               set_alpha_to_one=set_alpha_to_one, scale_arr=getattr(model, "scale_arr", None))


def start_sampling(model: VideoDiffusionModel, latent_shape: tuple[int, ...], num_steps: int,
                   generator: torch.Generator | None, z_T: torch.Tensor | None, *, spacing: str,
                   steps_offset: int, set_alpha_to_one: bool) -> tuple[DDIMSchedule, torch.Tensor]:
    """The DDIM schedule and the starting noise (drawn, or the given ``z_T`` checked)."""
    device, dtype = model_device_dtype(model)
    schedule = make_ddim_schedule(model, num_steps, spacing=spacing, steps_offset=steps_offset,
                                  set_alpha_to_one=set_alpha_to_one)
    if z_T is None:
        z_T = randn(tuple(latent_shape), generator, device, dtype)
    elif tuple(z_T.shape) != tuple(latent_shape):
        raise ValueError(f"z_T has shape {tuple(z_T.shape)}, expected {tuple(latent_shape)}")
    return schedule, z_T


def prepare_conditions(model: VideoDiffusionModel, batch_or_conditions: dict | Conditions,
                       latent_shape: tuple[int, ...] | None) -> tuple[Conditions, tuple[int, ...]]:
    """Conditions and the latent shape (B, C, T, h, w) to sample. A batch with a video is encoded
    (I2V methods take their conditioning frame latent from it; the shape comes from it too)."""
    if isinstance(batch_or_conditions, Conditions):
        if latent_shape is None:
            raise ValueError("sampling from Conditions needs latent_shape=(B, C, T, h, w)")
        return batch_or_conditions, tuple(latent_shape)
    batch = batch_or_conditions
    latents = None
    if "video" in batch and (model.image_to_video or latent_shape is None):
        with torch.no_grad():
            latents = model.encode_video(batch["video"])
    elif model.image_to_video:
        raise ValueError(f"{type(model).__name__} is image-to-video: the batch needs 'video' "
                         "(its conditioning frame)")
    if latent_shape is None:
        if latents is None:
            raise ValueError("batch has no 'video'; pass latent_shape=(B, C, T, h, w)")
        latent_shape = tuple(latents.shape)
    return model.conditions(batch, latents), tuple(latent_shape)


@torch.no_grad()
def sample_latents(model: VideoDiffusionModel, cond: Conditions, *, latent_shape: tuple[int, ...],
                   num_steps: int, guidance: Guidance | Mapping | None = None,
                   generator: torch.Generator | None = None, eta: float = 0.0, spacing: str = "uniform",
                   steps_offset: int = 1, set_alpha_to_one: bool = False, z_T: torch.Tensor | None = None,
                   callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Guided DDIM from pure noise (or ``z_T``) to clean latents (B, C, T, h, w)."""
    guidance = Guidance.from_config(guidance)
    schedule, z_T = start_sampling(model, latent_shape, num_steps, generator, z_T, spacing=spacing,
                                   steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)

    def predict(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_output(model, z, t, cond, guidance)

    return ddim_sample(predict, z_T, schedule, parameterization=model.parameterization, eta=eta,
                       generator=generator, callback=callback)


@torch.no_grad()
def sample_video(model: VideoDiffusionModel, batch_or_conditions: dict | Conditions, *, num_steps: int,
                 guidance: Guidance | Mapping | None = None, generator: torch.Generator | None = None,
                 latent_shape: tuple[int, ...] | None = None, **ddim_kwargs) -> torch.Tensor:
    """Sample and decode: (B, T, 3, H, W) in [-1, 1]. ``ddim_kwargs`` go to :func:`sample_latents`
    (eta, spacing, steps_offset, set_alpha_to_one, z_T, callback)."""
    cond, shape = prepare_conditions(model, batch_or_conditions, latent_shape)
    z0 = sample_latents(model, cond, latent_shape=shape, num_steps=num_steps, guidance=guidance,
                        generator=generator, **ddim_kwargs)
    return model.decode_latents(z0).clamp(-1, 1)
