"""The AnimateDiff text-to-video UNet: SD1.5 spatial layers + AnimateDiff v3 motion modules, built on
diffusers' ``UNetMotionModel``.

Two sizes share one code path:

- ``"full"``: the SD1.5 UNet config (320/640/1280/1280 channels, 8 heads, 768-d text tokens) with
  AnimateDiff v3 motion modules (8 heads, sinusoidal positions up to 32 frames, no mid-block motion
  module, as in CameraCtrl's and CVD's ``unet_additional_kwargs``). 1,276,658,564 parameters, the
  CameraCtrl manifest's UNet minus its 18,961,600 pose-adaptor parameters. Build it on ``meta``.
- ``"tiny"``: the same block types and layers per block (so 2 motion modules per down block and 3
  per up block, the layout the CVD modules hang on) at a width that runs on a laptop CPU.
"""

from __future__ import annotations

import torch
from diffusers import UNetMotionModel

__all__ = ["UNET_CONFIGS", "unet_config", "build_unet", "motion_module_sites"]

_FULL = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=(
        "CrossAttnDownBlockMotion",
        "CrossAttnDownBlockMotion",
        "CrossAttnDownBlockMotion",
        "DownBlockMotion",
    ),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    norm_num_groups=32,
    cross_attention_dim=768,
    num_attention_heads=8,
    motion_num_attention_heads=8,
    motion_max_seq_length=32,
    use_motion_mid_block=False,
)

# Two resolution levels keep every structural feature of the full model (a cross-attention block,
# a plain block, 2/3 motion modules per down/up block) at ~2 M parameters. Spatial attention sits on
# the coarser level only: full-resolution self-attention is what makes a CPU step slow.
_TINY = dict(
    _FULL,
    sample_size=32,
    down_block_types=("DownBlockMotion", "CrossAttnDownBlockMotion"),
    up_block_types=("CrossAttnUpBlockMotion", "UpBlockMotion"),
    block_out_channels=(32, 64),
    norm_num_groups=8,
    cross_attention_dim=64,
    num_attention_heads=2,
    motion_num_attention_heads=2,
)

UNET_CONFIGS: dict[str, dict] = {"full": _FULL, "tiny": _TINY}


def unet_config(size: str, **overrides) -> dict:
    """Constructor kwargs of ``UNetMotionModel`` for ``size`` ("tiny" | "full"), with overrides."""
    if size not in UNET_CONFIGS:
        raise ValueError(f"unknown AnimateDiff size {size!r}; expected one of {sorted(UNET_CONFIGS)}")
    unknown = set(overrides) - set(UNET_CONFIGS[size])
    if unknown:
        raise ValueError(f"unknown AnimateDiff UNet option(s) {sorted(unknown)}")
    return {**UNET_CONFIGS[size], **overrides}


def build_unet(size: str = "tiny", device: torch.device | str | None = None, **overrides) -> UNetMotionModel:
    """A randomly initialised ``UNetMotionModel``; ``device="meta"`` allocates nothing."""
    with torch.device(device if device is not None else "cpu"):
        return UNetMotionModel(**unet_config(size, **overrides))


def motion_module_sites(unet: UNetMotionModel) -> list[tuple[str, int, int]]:
    """``(part, block_index, level)`` of every block holding motion modules, in forward order.

    ``level`` indexes the pose-encoder feature list: down block ``i`` reads level ``i`` and up block
    ``i`` reads level ``L - 1 - i`` (the same resolution), as in CameraCtrl's UNet.
    """
    num_levels = len(unet.down_blocks)
    sites = [("down_blocks", i, i) for i, b in enumerate(unet.down_blocks) if hasattr(b, "motion_modules")]
    if getattr(unet.mid_block, "motion_modules", None) is not None:
        raise ValueError("AnimateDiff v3 (CameraCtrl/CVD layout) has no mid-block motion module")
    sites += [
        ("up_blocks", i, num_levels - 1 - i) for i, b in enumerate(unet.up_blocks) if hasattr(b, "motion_modules")
    ]
    return sites
