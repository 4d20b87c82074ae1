"""CameraCtrl's camera injection into AnimateDiff motion modules.

CameraCtrl (hehao13/CameraCtrl, ``PoseAdaptorAttnProcessor``) conditions the *first* temporal
self-attention of every motion module on the pose-encoder feature of that resolution level:

    x' = x + scale * qkv_merge(x + p)          (x: temporal tokens after the sinusoidal positions)
    attention(q = to_q(x'), k = to_k(x'), v = to_v(x'))

``qkv_merge`` is a zero-initialised ``Linear(C, C)``, so a freshly installed adaptor leaves the
backbone's output bit-identical. Down block ``i`` reads pose level ``i``; up block ``i`` reads level
``L - 1 - i`` (CameraCtrl's ``decoder_add_posecond``).

diffusers calls motion modules as ``motion_module(x, num_frames=...)`` with no side channel, so the
per-level features are handed to the processors through :meth:`PoseAdaptor.feed`, a context manager
around the UNet call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import UNetMotionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from camvid.models.animatediff.unet import motion_module_sites

__all__ = ["PoseAdaptorAttnProcessor", "PoseAdaptor", "install_pose_adaptor", "pose_feature_tokens"]


def pose_feature_tokens(feature: torch.Tensor, num_frames: int, channels: int) -> torch.Tensor:
    """A pose-encoder level feature as temporal tokens ``(B*h*w, T, C)``, the layout of the motion
    module's attention (diffusers flattens ``b h w`` in that order).

    Accepts ``(B, C, T, h, w)`` (CameraCtrl's output) or ``(B, T, C, h, w)``.
    """
    if feature.dim() != 5:
        raise ValueError(f"pose feature must be 5-d (B, C, T, h, w), got shape {tuple(feature.shape)}")
    if feature.shape[1] == channels and feature.shape[2] == num_frames:
        b, c, t, h, w = feature.shape
        return feature.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
    if feature.shape[1] == num_frames and feature.shape[2] == channels:
        b, t, c, h, w = feature.shape
        return feature.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)
    raise ValueError(
        f"pose feature of shape {tuple(feature.shape)} matches neither (B, C={channels}, T={num_frames}, h, w) "
        f"nor (B, T, C, h, w)"
    )


class PoseAdaptorAttnProcessor(nn.Module):
    """Attention processor of a motion module's first temporal attention with CameraCtrl's merge.

    Without a fed feature it computes exactly the wrapped base processor (the plain backbone).
    """

    def __init__(self, hidden_size: int, scale: float = 1.0, base: object | None = None):
        super().__init__()
        self.hidden_size = hidden_size
        self.scale = scale
        self.qkv_merge = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.qkv_merge.weight)
        nn.init.zeros_(self.qkv_merge.bias)
        # The backbone's own processor does the attention, so the math with the merge switched off is
        # the backbone's, bit for bit.
        self.base = base if base is not None else AttnProcessor2_0()
        self.pose_tokens: torch.Tensor | None = None  # (B*h*w, T, C), set by PoseAdaptor.feed
        self.keep: torch.Tensor | None = None  # (B*h*w, 1, 1) 1 = use camera, 0 = camera dropped

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("the pose adaptor conditions a temporal *self*-attention; got encoder_hidden_states")
        if self.pose_tokens is not None:
            pose = self.pose_tokens
            if pose.shape != hidden_states.shape:
                raise ValueError(
                    f"pose tokens {tuple(pose.shape)} do not match the motion-module tokens "
                    f"{tuple(hidden_states.shape)} (batch*h*w, frames, channels)"
                )
            merged = self.qkv_merge(hidden_states + pose.to(hidden_states.dtype)) * self.scale
            if self.keep is not None:
                merged = merged * self.keep.to(merged.dtype)
            hidden_states = hidden_states + merged
        return self.base(attn, hidden_states, None, attention_mask, temb)


class PoseAdaptor:
    """Handle on the processors installed in one UNet (plain object: the processors themselves are
    registered inside the UNet, so their keys read ``...attn1.processor.qkv_merge.*``)."""

    def __init__(self, processors: list[tuple[PoseAdaptorAttnProcessor, int]], level_channels: list[int]):
        self.processors = processors
        self.level_channels = level_channels

    def parameters(self) -> Iterator[nn.Parameter]:
        for proc, _ in self.processors:
            yield from proc.parameters()

    @contextmanager
    def feed(self, features: Sequence[torch.Tensor] | None, num_frames: int, keep: torch.Tensor | None = None):
        """Route per-level pose features (and per-sample keep flags, (B,) bool) into the processors
        for the duration of one UNet call. ``features=None`` runs the plain backbone."""
        try:
            if features is not None:
                if len(features) < len(self.level_channels):
                    raise ValueError(
                        f"pose encoder gave {len(features)} feature levels, the UNet needs {len(self.level_channels)}"
                    )
                tokens = [
                    pose_feature_tokens(f, num_frames, c) for f, c in zip(features, self.level_channels)
                ]
                for proc, level in self.processors:
                    proc.pose_tokens = tokens[level]
                    proc.keep = None
                    if keep is not None:
                        per_token = tokens[level].shape[0] // keep.shape[0]
                        proc.keep = keep.repeat_interleave(per_token)[:, None, None]
            yield
        finally:
            for proc, _ in self.processors:
                proc.pose_tokens = None
                proc.keep = None


def install_pose_adaptor(unet: UNetMotionModel, scale: float = 1.0) -> PoseAdaptor:
    """Replace the first temporal attention processor of every motion module by a pose adaptor."""
    processors = []
    for part, i, level in motion_module_sites(unet):
        for motion_module in getattr(unet, part)[i].motion_modules:
            attn = motion_module.transformer_blocks[0].attn1
            if isinstance(attn.processor, PoseAdaptorAttnProcessor):
                raise ValueError(f"{part}.{i} already has a pose adaptor installed")
            with torch.device(attn.to_q.weight.device):
                proc = PoseAdaptorAttnProcessor(attn.inner_dim, scale=scale, base=attn.processor)
            proc.to(dtype=attn.to_q.weight.dtype)
            attn.set_processor(proc)
            processors.append((proc, level))
    return PoseAdaptor(processors, list(unet.config.block_out_channels))
