"""Camera conditioning of the DynamiCrafter UNet: MotionCtrl, CameraCtrl and CamI2V.

Each ``add_*`` function attaches the method's new modules to the temporal transformer blocks of a
``DynamiCrafterUNet`` under the official names (so the released checkpoints load strictly) and
sets the block's ``camera_mode``; ``TemporalBasicTransformerBlock.forward`` applies them where the
official code does (ZGCTroy/CamI2V ``CameraControl/*/*_modified_modules.py``). Every new module
starts as an exact no-op, so a freshly attached method reproduces the base UNet bit for bit.

Which blocks (from the official code, confirmed by the parameter counts of the manifests):
    MotionCtrl: all 17 temporal blocks, including ``init_attn`` (``cc_projection`` Linear C+12 -> C,
                initialised to [I | 0], plus ``attn2`` of those blocks made trainable).
    CameraCtrl: the 16 temporal blocks of the UNet levels, not ``init_attn`` (``cc_projection``
                Linear C -> C, zero-initialised).
    CamI2V:     the same 16 (``pluker_projection`` Linear C -> C, zero-initialised, and, unless the
                attention variant is ``temporal``, ``epipolar.epipolar_attn``, the cross-frame
                attention from ``camvid.attention`` with a zero-initialised output projection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from camvid.models.dynamicrafter.unet import DynamiCrafterUNet

CAMERA_METHODS = ("motionctrl", "cameractrl", "cami2v")
# cross-frame attention variants a single-video DynamiCrafter method can use; "temporal" = none
# beyond the UNet's own temporal attention. "cross_video" needs two videos (CVD) and is rejected.
DYNAMICRAFTER_ATTN_VARIANTS = ("temporal", "full3d", "epipolar_ref", "epipolar")
CAMI2V_ADD_TYPES = ("add_to_main_branch", "add_into_temporal_attn")
# the released CamI2V checkpoints have 4 register tokens (the paper text says 2)
DEFAULT_ATTN_KWARGS = {"epipolar": {"num_register_tokens": 4}, "epipolar_ref": {"num_register_tokens": 4}}


def _blocks(unet: DynamiCrafterUNet, include_init_attn: bool):
    return [block for _, block in unet.temporal_blocks(include_init_attn=include_init_attn)]


def _width(block) -> int:
    return block.attn1.to_q.in_features


def add_motionctrl(unet: DynamiCrafterUNet, pose_dim: int = 12) -> None:
    for block in _blocks(unet, include_init_attn=True):
        c = _width(block)
        proj = nn.Linear(c + pose_dim, c)
        with torch.no_grad():
            proj.weight.zero_()
            proj.weight[:, :c].copy_(torch.eye(c))
            proj.bias.zero_()
        block.cc_projection = proj
        block.camera_mode = "motionctrl"


def _zero_linear(c: int) -> nn.Linear:
    proj = nn.Linear(c, c)
    nn.init.zeros_(proj.weight)
    nn.init.zeros_(proj.bias)
    return proj


def add_cameractrl(unet: DynamiCrafterUNet) -> None:
    for block in _blocks(unet, include_init_attn=False):
        block.cc_projection = _zero_linear(_width(block))
        block.camera_mode = "cameractrl"


# attn config keys (conf/attn/*.yaml) -> cross-frame module constructor arguments; the other keys
# (threshold, path, tau, seed, tile_hw, tile_frames) configure the AttentionContext (camvid.models.camera.context)
MODULE_KWARGS = {"num_registers": "num_register_tokens", "num_register_tokens": "num_register_tokens",
                 "dim_head": "dim_head"}


def _cross_frame_module(dim: int, heads: int, variant: str, attn_kwargs: dict | None) -> nn.Module:
    """CamI2V's ``epipolar`` child (``epipolar.epipolar_attn.*`` in the checkpoints), built by
    ``camvid.attention``; its output projection starts at zero."""
    try:
        from camvid.attention import build_cross_frame_attention
    except ImportError as err:
        raise ImportError(f"attention variant {variant!r} needs camvid.attention.build_cross_frame_attention, "
                          f"which could not be imported: {err}") from err
    kwargs = dict(DEFAULT_ATTN_KWARGS.get(variant, {}))
    for key, value in (attn_kwargs or {}).items():
        if key in MODULE_KWARGS:
            kwargs[MODULE_KWARGS[key]] = value
    return build_cross_frame_attention(variant, dim, heads, **kwargs)


def add_cami2v(unet: DynamiCrafterUNet, attn_variant: str = "epipolar", attn_kwargs: dict | None = None,
               add_type: str = "add_to_main_branch") -> None:
    if attn_variant not in DYNAMICRAFTER_ATTN_VARIANTS:
        raise ValueError(f"attn={attn_variant!r} cannot be used with a DynamiCrafter camera method "
                         f"(single video); choose one of {', '.join(DYNAMICRAFTER_ATTN_VARIANTS)}")
    if add_type not in CAMI2V_ADD_TYPES:
        raise ValueError(f"CamI2V add_type must be one of {CAMI2V_ADD_TYPES}, got {add_type!r}")
    for block in _blocks(unet, include_init_attn=False):
        c = _width(block)
        block.pluker_projection = _zero_linear(c)
        if attn_variant != "temporal":
            block.epipolar = _cross_frame_module(c, block.attn1.heads, attn_variant, attn_kwargs)
        block.camera_mode = "cami2v"
        block.cami2v_add_type = add_type


def camera_trainable_modules(unet: DynamiCrafterUNet, method: str) -> list[nn.Module]:
    """The UNet-side modules a camera method trains (the pose encoder is handled by the caller)."""
    out: list[nn.Module] = []
    for block in _blocks(unet, include_init_attn=True):
        if block.camera_mode != method:
            continue
        if method == "motionctrl":
            out += [block.cc_projection, block.attn2]
        elif method == "cameractrl":
            out.append(block.cc_projection)
        elif method == "cami2v":
            out.append(block.pluker_projection)
            if hasattr(block, "epipolar"):
                out.append(block.epipolar)
    return out
