"""``DynamiCrafterUNet``: the lvdm 3-D UNet of DynamiCrafter, configured by plain arguments.

Parameter names equal the official ``model.diffusion_model.*`` keys (checked against the manifests
in ``camvid.models.manifests`` by the tests). Defaults are the 256x256 release; the 512 release
differs only in ``image_cross_attention_scale_learnable=False`` and ``default_fs=24``.

Forward contract::

    x          (B, in_channels, T, H, W)  noisy latent with the conditioning-frame latent already
                                          concatenated on channels (hybrid conditioning)
    timesteps  (B,)
    text       (B, L, context_dim)        text tokens, shared by all frames
    image      (B, N, context_dim) or (B, T, N, context_dim)   image tokens, shared or per frame
    fs         (B,) frame stride (or fps for the 512 model); ``default_fs`` when None
    camera     UNetCamera | None          camera inputs (see ``camvid.models.camera``)
    returns    (B, out_channels, T, H, W)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from camvid.models.dynamicrafter.blocks import (
    Downsample,
    ResBlock,
    SpatialTransformer,
    TemporalCamera,
    TemporalTransformer,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)


@dataclass
class UNetCamera:
    """Camera inputs of one UNet call.

    ``rt``: (B, T, 12) relative w2c ``[R|t]`` rows (MotionCtrl).
    ``pose_features``: one (B, C_level, T, h, w) tensor per UNet level (``h = H / 2**level``).
    ``attention_context``: handed unchanged to every CamI2V cross-frame attention module.
    """

    rt: torch.Tensor | None = None
    pose_features: list[torch.Tensor] | None = None
    attention_context: object | None = None

    def at_level(self, level: int) -> TemporalCamera:
        feats = None if self.pose_features is None else self.pose_features[level]
        return TemporalCamera(rt=self.rt, pose_features=feats, attention_context=self.attention_context)


class TimestepEmbedSequential(nn.Sequential):
    """Runs its layers with the arguments each kind needs; ``level`` picks the camera features."""

    level: int = 0

    def forward(self, x, emb, context, batch_size: int, camera: UNetCamera | None = None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch_size)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = rearrange(x, "(b t) c h w -> b c t h w", b=batch_size)
                x = layer(x, None if camera is None else camera.at_level(self.level))
                x = rearrange(x, "b c t h w -> (b t) c h w")
            else:
                x = layer(x)
        return x


class DynamiCrafterUNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 8,
        out_channels: int = 4,
        model_channels: int = 320,
        channel_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (4, 2, 1),
        num_head_channels: int = 64,
        context_dim: int = 1024,
        temporal_length: int = 16,
        dropout: float = 0.1,
        use_linear: bool = True,
        temporal_conv: bool = True,
        addition_attention: bool = True,
        image_cross_attention: bool = True,
        image_cross_attention_scale_learnable: bool = True,
        fs_condition: bool = True,
        default_fs: int = 3,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        for c in (model_channels * m for m in channel_mult):
            if c % 32 or c % num_head_channels:
                raise ValueError(f"channel width {c} (model_channels {model_channels} x channel_mult "
                                 f"{tuple(channel_mult)}) must be divisible by 32 (GroupNorm) and by "
                                 f"num_head_channels={num_head_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.context_dim = context_dim
        self.channel_mult = tuple(channel_mult)
        self.attention_resolutions = tuple(attention_resolutions)
        self.temporal_length = temporal_length
        self.fs_condition = fs_condition
        self.default_fs = default_fs
        self.gradient_checkpointing = gradient_checkpointing
        emb_dim = model_channels * 4

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if fs_condition:
            # zero-initialised last layer: a pretrained image model is unchanged by the new input
            self.fps_embedding = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                               zero_module(nn.Linear(emb_dim, emb_dim)))

        def res(ch_in, ch_out=None):
            return ResBlock(ch_in, emb_dim, dropout, ch_out, temporal_conv=temporal_conv)

        def attention(ch):
            heads = ch // num_head_channels
            return [
                SpatialTransformer(ch, heads, num_head_channels, context_dim, dropout, use_linear,
                                   image_cross_attention, image_cross_attention_scale_learnable),
                TemporalTransformer(ch, heads, num_head_channels, dropout, use_linear),
            ]

        def seq(layers, level):
            block = TimestepEmbedSequential(*layers)
            block.level = level
            return block

        self.input_blocks = nn.ModuleList([seq([nn.Conv2d(in_channels, model_channels, 3, padding=1)], 0)])
        if addition_attention:
            # the official init_attn: 8 heads of num_head_channels, 1x1-conv projections
            self.init_attn = seq([TemporalTransformer(model_channels, 8, num_head_channels, dropout,
                                                      use_linear=False)], 0)
        skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            ds = 2 ** level
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attention(ch)
                self.input_blocks.append(seq(layers, level))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(seq([Downsample(ch)], level))
                skip_channels.append(ch)

        last = len(channel_mult) - 1
        self.middle_block = seq([res(ch), *attention(ch), res(ch)], last)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            ds = 2 ** level
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attention(ch)
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(seq(layers, level))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)))

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    def level_channels(self) -> list[int]:
        """Channel width of each level, i.e. what a camera pose encoder must produce."""
        return [self.model_channels * m for m in self.channel_mult]

    def temporal_blocks(self, include_init_attn: bool = True):
        """``(name, block)`` of every temporal transformer block, in module order."""
        for name, module in self.named_modules():
            if isinstance(module, TemporalTransformer):
                if not include_init_attn and name.startswith("init_attn"):
                    continue
                for i, block in enumerate(module.transformer_blocks):
                    yield f"{name}.transformer_blocks.{i}", block

    def _run(self, block, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                image: torch.Tensor | None = None, fs: torch.Tensor | None = None,
                camera: UNetCamera | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"UNet input has {c} channels, expected in_channels={self.in_channels} "
                             "(noisy latent + conditioning-frame latent)")
        depth = 2 ** (self.num_levels - 1)
        if h % depth or w % depth:
            raise ValueError(f"latent size {h}x{w} must be divisible by {depth} ({self.num_levels} UNet levels)")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)

        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if self.fs_condition:
            if fs is None:
                fs = torch.full((b,), self.default_fs, dtype=torch.long, device=x.device)
            emb = emb + self.fps_embedding(timestep_embedding(fs, self.model_channels).to(x.dtype))
        emb = emb.repeat_interleave(t, dim=0)

        text = text.repeat_interleave(t, dim=0)
        if image is not None:
            image = (rearrange(image, "b t n d -> (b t) n d") if image.ndim == 4
                     else image.repeat_interleave(t, dim=0))
        context = (text, image)

        hs = []
        h_ = rearrange(x, "b c t h w -> (b t) c h w")
        for i, block in enumerate(self.input_blocks):
            h_ = self._run(block, h_, emb, context, b, camera)
            if i == 0 and hasattr(self, "init_attn"):
                h_ = self._run(self.init_attn, h_, emb, context, b, camera)
            hs.append(h_)
        h_ = self._run(self.middle_block, h_, emb, context, b, camera)
        for block in self.output_blocks:
            h_ = self._run(block, torch.cat([h_, hs.pop()], dim=1), emb, context, b, camera)
        return rearrange(self.out(h_), "(b t) c h w -> b c t h w", b=b)


def dynamicrafter_unet_config(size: str) -> dict:
    """Constructor arguments of the released UNets (``"256"``, ``"512"``) and the CPU ``"tiny"`` one."""
    if size == "256":
        return {}
    if size == "512":
        return dict(image_cross_attention_scale_learnable=False, default_fs=24)
    if size == "tiny":
        # attention (hence the camera modules' injection and cross-frame attention) at both levels, as
        # the released UNets have it at their full latent resolution: with the camera modules at the
        # coarse level only, a frozen base cannot be made to follow a camera (docs/diffusion.md)
        return dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                    num_head_channels=8, context_dim=64, dropout=0.0)
    raise ValueError(f"unknown DynamiCrafter size {size!r}; choose tiny, 256 or 512")

