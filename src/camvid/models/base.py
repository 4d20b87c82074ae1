"""The contract between every method (backbone + camera conditioning) and the one training loop /
one sampler.

A method turns a batch into latents and conditions, and predicts noise (or v) from a noisy latent.
The training loss, classifier-free-guidance dropout and DDIM sampling are written once, in
``camvid.diffusion``, against this interface.

Batch layout (what ``camvid.data`` yields after collation; training streams ship ``video`` as uint8
and ``camvid.data.batches.to_device`` normalises it on the device):
    video      (B, T, 3, H, W) float in [-1, 1]
    K          (B, T, 3, 3) pixel intrinsics at (H, W)
    c2w        (B, T, 4, 4) camera-to-world relative to the conditioning frame (identity there)
    cond_index (B,) long, index of the conditioning frame
    frame_stride (B,) long
    caption    list[str] of length B
    key        list[str] of length B
    num_views  int (1 for single videos; 2 for CVD pairs, laid out [a0, b0, a1, b1, ...])
    camera_free (B,) bool, optional: True for CVD's WebVid homography pairs, which have no cameras;
               such a batch runs without camera input (see :func:`batch_camera_free`)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import nn


@dataclass
class CameraInputs:
    """Cameras of a batch, at the generation resolution (pixels of the decoded video)."""

    K: torch.Tensor  # (B, T, 3, 3)
    c2w: torch.Tensor  # (B, T, 4, 4), relative to the conditioning frame
    image_hw: tuple[int, int]
    cond_index: torch.Tensor | None = None  # (B,)
    num_views: int = 1

    def select(self, keep: torch.Tensor) -> CameraInputs:
        return replace(self, K=self.K[keep], c2w=self.c2w[keep],
                       cond_index=None if self.cond_index is None else self.cond_index[keep])


@dataclass
class Conditions:
    """Everything the denoiser sees besides the noisy latent and the timestep.

    ``drop_*`` are (B,) bool tensors: True means that condition is replaced by its null value for
    that sample (classifier-free guidance). Methods read the flags in ``denoise``.
    """

    text: torch.Tensor | None = None  # (B, L, D) text tokens
    image: torch.Tensor | None = None  # method-specific image condition (latent / tokens)
    camera: CameraInputs | None = None
    frame_stride: torch.Tensor | None = None  # (B,)
    drop_text: torch.Tensor | None = None
    drop_image: torch.Tensor | None = None
    drop_camera: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)
    # the whole batch has no camera input (CVD's WebVid phase): the camera encoder and its injections
    # are not run at all, unlike ``drop_camera`` (the null camera of classifier-free guidance)
    camera_free: bool = False

    def with_drops(self, text=None, image=None, camera=None) -> Conditions:
        """Copy with the given per-sample drop flags OR-ed into the existing ones."""

        def merge(old, new):
            if new is None:
                return old
            return new if old is None else (old | new)

        return replace(
            self,
            drop_text=merge(self.drop_text, text),
            drop_image=merge(self.drop_image, image),
            drop_camera=merge(self.drop_camera, camera),
        )

    def repeat(self, n: int) -> Conditions:
        """Stack ``n`` copies along the batch (for batched CFG)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = torch.cat([v] * n)
            elif isinstance(v, CameraInputs):
                ci = None if v.cond_index is None else torch.cat([v.cond_index] * n)
                v = replace(v, K=torch.cat([v.K] * n), c2w=torch.cat([v.c2w] * n), cond_index=ci)
            out[f.name] = v
        return Conditions(**out)


def batch_camera_free(batch: dict) -> bool:
    """Whether a batch is camera-free (CVD's WebVid homography pairs carry ``camera_free``).

    CVD's public training code feeds WebVid batches with ``pose_embedding=None``: the pose encoder
    is not run and no pose feature is merged into the motion modules; only the cross-video modules
    (with the homography's pseudo-epipolar band) and the backbone see the batch. The CVD mix never
    puts both sources into one batch, so a batch is camera-free as a whole or not at all.
    """
    flags = batch.get("camera_free")
    if flags is None:
        return False
    flags = torch.as_tensor(flags, dtype=torch.bool)
    if bool(flags.all()):
        return True
    if bool(flags.any()):
        raise ValueError(f"batch['camera_free'] = {flags.tolist()}: a batch mixes camera-free (WebVid) and "
                         "camera samples; the CVD mix draws each batch from one source")
    return False


class VideoDiffusionModel(nn.Module):
    """Base class of every method. Subclasses set the attributes and implement the methods below.

    Attributes:
        parameterization: "eps" or "v".
        num_train_timesteps: length of the training noise schedule.
        alphas_cumprod: (num_train_timesteps,) buffer.
        supports: set of condition names this method uses ({"text", "image", "camera"}).
        image_to_video: True when the conditioning frame comes from the batch (DynamiCrafter family).
    """

    parameterization: str = "eps"
    image_to_video: bool = True

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1] -> latents (B, C, T, h, w), already scaled."""
        raise NotImplementedError

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """latents (B, C, T, h, w) -> (B, T, 3, H, W) in [-1, 1]."""
        raise NotImplementedError

    def conditions(self, batch: dict, latents: torch.Tensor | None = None) -> Conditions:
        """Full (undropped) conditions of a batch. ``latents`` are the encoded clean videos if the
        caller has them (I2V methods take the conditioning frame's latent from there)."""
        raise NotImplementedError

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Model output (eps or v, per ``parameterization``) with the shape of ``z_t``."""
        raise NotImplementedError

    def trainable_parameters(self):
        """Parameters the method trains (the papers freeze the base model)."""
        return [p for p in self.parameters() if p.requires_grad]

    #: attribute names of the conditioning encoders (VAE, text and image encoders), which stay frozen
    #: even when the whole denoiser trains; their features are computed without gradients.
    encoder_attributes: tuple[str, ...] = (
        "first_stage_model", "cond_stage_model", "embedder", "first_stage", "text_encoder", "image_encoder",
    )

    def encoder_modules(self) -> list[nn.Module]:
        return [m for name in self.encoder_attributes if isinstance(m := getattr(self, name, None), nn.Module)]

    def freeze_base(self) -> None:
        """Freeze everything, then unfreeze the method's new modules. Subclasses override."""
        raise NotImplementedError
