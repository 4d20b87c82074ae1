"""CamI2V's cross-frame attention (epipolar, epipolar_ref, full3d) on the AnimateDiff motion modules.

CamI2V (arXiv 2410.15957) adds an epipolar attention beside DynamiCrafter's temporal attention; on
AnimateDiff (``model=cami2v backbone=animatediff``) we keep CameraCtrl's Plücker injection
(``qkv_merge`` in the first temporal attention, the pose encoder) and hang one cross-frame module
after every motion module, where CVD hangs its ``epi_modules``: diffusers' motion blocks have no slot
for an extra module, so a forward hook adds its residual update to the motion module's output.

Each module is ``LayerNorm`` -> the ``camvid.attention`` variant (zero-initialised output
projection, so a fresh model is the CameraCtrl model) -> residual. Keys:
``{down,up}_blocks.i.cross_frame_modules.j.{norm, attn}``. Masks come from one
``AttentionContext`` per UNet call (``camvid.models.camera.context``: a dropped camera sees every
cell, as on DynamiCrafter).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from camvid.models.animatediff.unet import motion_module_sites
from camvid.models.camera.context import build_attention_context
from camvid.models.camera.injection import _cross_frame_module

__all__ = ["CrossFrameModule", "CrossFrameAttention", "install_cross_frame_modules", "VARIANTS"]

VARIANTS = ("epipolar", "epipolar_ref", "full3d")


class CrossFrameModule(nn.Module):
    def __init__(self, channels: int, heads: int, variant: str, attn_kwargs: dict | None):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = _cross_frame_module(channels, heads, variant, attn_kwargs)

    def forward(self, tokens: torch.Tensor, ctx, feat_hw: tuple[int, int]) -> torch.Tensor:
        return self.attn(self.norm(tokens), ctx, feat_hw)


class CrossFrameAttention:
    """Handle on the installed modules (plain object; the modules live inside the UNet)."""

    def __init__(self, variant: str, attn_kwargs: dict | None):
        self.variant = variant
        self.attn_kwargs = dict(attn_kwargs or {})
        self.modules: list[CrossFrameModule] = []
        self.context = None
        self.num_frames = 0

    def parameters(self):
        for module in self.modules:
            yield from module.parameters()

    @contextmanager
    def bind(self, camera, num_frames: int, drop: torch.Tensor | None = None):
        self.context = build_attention_context(self.variant, camera, drop, self.attn_kwargs)
        self.num_frames = num_frames
        try:
            yield self.context
        finally:
            self.context = None

    def run(self, module: CrossFrameModule, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` (B*T, C, h, w), a motion module's output -> plus the cross-frame update."""
        if self.context is None:
            raise ValueError("the UNet has cross-frame modules: call it inside CrossFrameAttention.bind(camera, ...)")
        T = self.num_frames
        BT, C, h, w = hidden.shape
        tokens = hidden.reshape(BT // T, T, C, h * w).transpose(2, 3)  # (B, T, hw, C)
        update = module(tokens, self.context, (h, w))
        return hidden + update.transpose(2, 3).reshape(BT, C, h, w).contiguous()


class _AfterMotionModule:
    """Forward hook (an object, so a deep copy of the model stays self-consistent)."""

    def __init__(self, handle: CrossFrameAttention, module: CrossFrameModule):
        self.handle = handle
        self.module = module

    def __call__(self, motion_module, args, output):
        return self.handle.run(self.module, output)


def install_cross_frame_modules(unet, variant: str, attn_kwargs: dict | None = None,
                                heads: int | None = None,
                                module_device: torch.device | str | None = None) -> CrossFrameAttention:
    if variant not in VARIANTS:
        raise ValueError(f"attn={variant!r} is not a CamI2V cross-frame attention; choose one of {', '.join(VARIANTS)}")
    heads = heads or unet.config.motion_num_attention_heads
    handle = CrossFrameAttention(variant, attn_kwargs)
    for part, i, _ in motion_module_sites(unet):
        block = getattr(unet, part)[i]
        ref = block.motion_modules[0].proj_in.weight
        with torch.device(module_device if module_device is not None else ref.device):
            block.cross_frame_modules = nn.ModuleList(
                CrossFrameModule(mm.proj_in.in_features, heads, variant, attn_kwargs) for mm in block.motion_modules
            ).to(ref.dtype)
        for motion_module, module in zip(block.motion_modules, block.cross_frame_modules):
            motion_module.register_forward_hook(_AfterMotionModule(handle, module))
            handle.modules.append(module)
    return handle
