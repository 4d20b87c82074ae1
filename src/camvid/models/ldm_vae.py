"""DynamiCrafter's first stage (lvdm ``AutoencoderKL``, KL-f8) on diffusers' ``AutoencoderKL``.

The released ``model.ckpt`` stores the VAE under ``first_stage_model.*`` in the LDM layout
(``encoder.down.0.block.0...``, ``mid.attn_1.q`` as 1x1 convolutions). The renaming to diffusers
(``encoder.down_blocks.0.resnets.0...``, ``mid_block.attentions.0.to_q`` as linears) is diffusers'
own ``convert_ldm_vae_checkpoint``. We run it once on index tensors (one per official key, named
by the manifest of the release) to read off which official key lands on which diffusers key, and
use that table in both directions: loading is then a strict rename + reshape (1x1 conv -> linear)
that also works on the ``meta`` device and never copies the real tensors twice.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from camvid.models.encoders import AutoencoderKLFirstStage

__all__ = ["LDM_KL_F8_CONFIG", "LDMFirstStage", "ldm_vae_key_map"]

# lvdm first_stage_config.ddconfig of DynamiCrafter (256 and 512): ch 128, ch_mult [1, 2, 4, 4],
# num_res_blocks 2, z_channels 4 (double_z), no attention in the levels, one in each middle block.
LDM_KL_F8_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
    sample_size=256,
)
SCALE_FACTOR = 0.18215  # DynamiCrafter's scale_factor


@lru_cache(maxsize=1)
def ldm_vae_key_map() -> dict[str, str]:
    """diffusers ``AutoencoderKL`` key -> LDM key (under ``first_stage_model.``), from diffusers'
    converter applied to the official key list of the DynamiCrafter release."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from camvid.models.manifests import load_manifest

    official = sorted(load_manifest("dynamicrafter_256x256", prefix="first_stage_model."))
    # every value is a 4-d index tensor so diffusers' conv->linear slicing keeps the index readable
    index = {f"first_stage_model.{k}": torch.full((1, 1, 1, 1), float(i), device="cpu") for i, k in enumerate(official)}
    converted = convert_ldm_vae_checkpoint(index, {"down_block_types": LDM_KL_F8_CONFIG["down_block_types"],
                                                  "up_block_types": LDM_KL_F8_CONFIG["up_block_types"]})
    out = {ours: official[int(value.flatten()[0].item())] for ours, value in converted.items()}
    if len(set(out.values())) != len(official):
        raise RuntimeError("diffusers' LDM VAE conversion does not cover the DynamiCrafter first stage one to one")
    return out


class LDMFirstStage(AutoencoderKLFirstStage):
    """``AutoencoderKLFirstStage`` with the released LDM key layout: built from the lvdm config
    (random weights, or on ``meta``), filled from ``first_stage_model.*`` of ``model.ckpt``."""

    def __init__(self, config: dict | None = None, scale_factor: float = SCALE_FACTOR, **kwargs):
        from diffusers import AutoencoderKL

        super().__init__(vae=AutoencoderKL(**dict(LDM_KL_F8_CONFIG, **(config or {}))),
                         scale_factor=scale_factor, **kwargs)

    def official_keys(self) -> dict[str, tuple[int, ...]]:
        own = self.vae.state_dict()
        shapes = {}
        for ours, src in ldm_vae_key_map().items():
            shape = tuple(own[ours].shape)
            # attention projections: linear in diffusers, 1x1 conv in LDM
            shapes[src] = shape + (1, 1) if ".mid.attn_1." in src and src.endswith((".q.weight", ".k.weight",
                                                                                     ".v.weight", "proj_out.weight")) \
                else shape
        return shapes

    def from_official(self, state: dict[str, torch.Tensor], source: str):
        key_map = ldm_vae_key_map()
        needed = set(key_map.values())
        missing, unexpected = sorted(needed - set(state)), sorted(set(state) - needed)
        if missing or unexpected:
            raise ValueError(f"{source}: {len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected "
                             f"key(s) {unexpected[:5]} (LDM KL-f8 first stage expected)")
        own = self.vae.state_dict()
        out = {}
        for ours, src in key_map.items():
            value = state[src]
            if value.numel() != own[ours].numel():
                raise ValueError(f"{source}: first_stage_model.{src} has shape {tuple(value.shape)}, the model "
                                 f"expects {self.official_keys()[src]}")
            out[f"vae.{ours}"] = value.reshape(own[ours].shape)
        return out, []

    def to_official(self) -> dict[str, torch.Tensor]:
        own = self.vae.state_dict()
        shapes = self.official_keys()
        return {src: own[ours].reshape(shapes[src]) for ours, src in ldm_vae_key_map().items()}
