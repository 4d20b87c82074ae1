"""Noise schedules, the training loss, classifier-free guidance, DDIM and CVD collaborative sampling,
written once against :class:`camvid.models.base.VideoDiffusionModel` (see docs/diffusion.md)."""

from camvid.diffusion.collaborative import (
    collaborative_output,
    sample_collaborative,
    sample_collaborative_video,
    select_pairs,
)
from camvid.diffusion.ddim import (
    DDIMSchedule,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    diffusers_ddim_scheduler,
)
from camvid.diffusion.guidance import Guidance, guided_output
from camvid.diffusion.losses import CondDropout, diffusion_loss
from camvid.diffusion.sampler import sample_latents, sample_video
from camvid.diffusion.schedule import (
    dynamic_rescale_scales,
    make_alphas_cumprod,
    make_betas,
    q_sample,
    rescale_zero_terminal_snr,
)

__all__ = [
    "CondDropout",
    "DDIMSchedule",
    "Guidance",
    "collaborative_output",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "diffusers_ddim_scheduler",
    "diffusion_loss",
    "dynamic_rescale_scales",
    "guided_output",
    "make_alphas_cumprod",
    "make_betas",
    "q_sample",
    "rescale_zero_terminal_snr",
    "sample_collaborative",
    "sample_collaborative_video",
    "sample_latents",
    "sample_video",
    "select_pairs",
]
