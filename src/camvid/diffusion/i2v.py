"""First-frame replacement for image-to-video denoisers.

DynamiCrafter gives the denoiser its conditioning frame only as a latent concatenated to every
frame's channels; the frame itself is noised like the others. With ``first_frame="replace"`` the
conditioning frame's slot of the noisy latent is overwritten with its clean latent before the
network sees it, and the network's output there is overwritten with the exact output that clean
latent implies. Two consequences:

* the cross-frame attention (epipolar, 3D full) reads the clean conditioning frame at every noise
  level, so a frame can fetch its content along its epipolar line from the start of sampling; and
* the sampler reproduces the conditioning frame exactly (DDIM of an exact x0 returns it), so the
  training loss on that frame is zero and the network spends its capacity on the other frames.

``first_frame="replace_residual"`` does the same and also reads an x0-predicting network's output as
the *change* from the conditioning frame (x0 = conditioning latent + output, every frame): an untrained
network then predicts the conditioning frame repeated, a sharp still video, and training only has to
learn how the view moves, not how to copy the frame through the UNet.

Stable Video Diffusion style models and several camera-control I2V codebases keep the first frame
clean the same way; for the tiny CPU models it is what lets a few hundred steps learn motion.
"""

from __future__ import annotations

import torch

from camvid.diffusion.schedule import check_parameterization, eps_from_x0, v_from_x0_eps

FIRST_FRAME_MODES = ("concat", "replace", "replace_residual")


def check_first_frame_mode(mode: str) -> None:
    if mode not in FIRST_FRAME_MODES:
        raise ValueError(f"first_frame={mode!r}: choose one of {FIRST_FRAME_MODES} ('concat' = DynamiCrafter, "
                         "the conditioning frame only as concatenated channels; 'replace' = also keep it clean in "
                         "the noisy latent; 'replace_residual' = also predict x0 as a change from that frame)")


def _frame_mask(z_t: torch.Tensor, cond_index: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, 1, 1) bool, True at each video's conditioning frame."""
    b, _, frames = z_t.shape[:3]
    cond_index = cond_index.to(z_t.device).long().reshape(-1)
    if cond_index.shape[0] != b:
        if b % cond_index.shape[0]:
            raise ValueError(f"cond_index has {cond_index.shape[0]} entries for a batch of {b}")
        cond_index = cond_index.repeat(b // cond_index.shape[0])
    if bool((cond_index < 0).any() | (cond_index >= frames).any()):
        raise ValueError(f"cond_index {cond_index.tolist()} out of range for {frames} frames")
    mask = torch.arange(frames, device=z_t.device).view(1, frames) == cond_index.view(b, 1)
    return mask.view(b, 1, frames, 1, 1)


def replace_conditioning_frame(z_t: torch.Tensor, cond_latent: torch.Tensor, cond_index: torch.Tensor) -> torch.Tensor:
    """``z_t`` (B, C, T, h, w) with each video's conditioning frame set to ``cond_latent`` (B, C, h, w)."""
    mask = _frame_mask(z_t, cond_index)
    return torch.where(mask, cond_latent.to(z_t.dtype).unsqueeze(2).expand_as(z_t), z_t)


def exact_conditioning_output(output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, cond_latent: torch.Tensor,
                              cond_index: torch.Tensor, alphas_cumprod: torch.Tensor,
                              parameterization: str) -> torch.Tensor:
    """``output`` with the conditioning frame's entries replaced by the model output that the known
    clean latent implies for the (original, noisy) ``z_t`` at timestep ``t``."""
    check_parameterization(parameterization)
    mask = _frame_mask(z_t, cond_index)
    x0 = cond_latent.to(z_t.dtype).unsqueeze(2).expand_as(z_t)
    if parameterization == "x0":
        exact = x0
    else:
        eps = eps_from_x0(z_t, x0, t, alphas_cumprod)
        exact = eps if parameterization == "eps" else v_from_x0_eps(x0, eps, t, alphas_cumprod)
    return torch.where(mask, exact.to(output.dtype), output)


def add_conditioning_residual(output: torch.Tensor, cond_latent: torch.Tensor) -> torch.Tensor:
    """x0 of every frame = the conditioning latent (B, C, h, w) + the network's output (B, C, T, h, w)."""
    return output + cond_latent.to(output.dtype).unsqueeze(2)
