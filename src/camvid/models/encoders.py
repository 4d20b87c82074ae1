"""Frozen encoders shared by the methods: the first stage (pixels <-> latents), text and image.

Interfaces (what a full-size loader, e.g. the OpenCLIP ViT-H towers or the lvdm VAE, must provide):

* first stage: ``encode(video (B, T, 3, H, W) in [-1, 1]) -> (B, C, T, H/f, W/f)`` already scaled,
  ``decode`` the inverse, attributes ``latent_channels`` and ``downsample`` (= f).
* text encoder: ``forward(captions: list[str]) -> (B, L, dim)``, attribute ``dim``.
* image encoder: ``forward(images (B, 3, H, W) in [-1, 1]) -> (B, N, dim)``, attribute ``dim``.

All of them are ``FrozenModule``: no parameter requires grad and ``train()`` keeps them in eval
mode, so a training loop that calls ``model.train()`` cannot switch on dropout inside them.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class FrozenModule(nn.Module):
    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenModule:
        return super().train(False)


def _check_video(video: torch.Tensor, factor: int) -> None:
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
    if video.shape[-2] % factor or video.shape[-1] % factor:
        raise ValueError(f"video size {video.shape[-2]}x{video.shape[-1]} is not divisible by the "
                         f"first-stage downsampling factor {factor}")


class PixelShuffleFirstStage(FrozenModule):
    """Exact, lossless space-to-depth: ``f x f`` pixel blocks become ``3 f^2`` latent channels.

    ``decode(encode(v)) == v`` bit for bit when ``scale`` is a power of two, so a tiny model trained
    on CPU learns real pixels and its samples can be scored by the real evaluation pipeline.
    """

    def __init__(self, factor: int = 2, scale: float = 1.0):
        super().__init__()
        if factor < 1:
            raise ValueError(f"PixelShuffleFirstStage factor must be >= 1, got {factor}")
        self.downsample = factor
        self.latent_channels = 3 * factor * factor
        self.scale = scale

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        _check_video(video, self.downsample)
        b = video.shape[0]
        z = F.pixel_unshuffle(rearrange(video, "b t c h w -> (b t) c h w"), self.downsample)
        return rearrange(z, "(b t) c h w -> b c t h w", b=b) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (B, {self.latent_channels}, T, h, w), got {tuple(z.shape)}")
        b = z.shape[0]
        x = F.pixel_shuffle(rearrange(z / self.scale, "b c t h w -> (b t) c h w"), self.downsample)
        return rearrange(x, "(b t) c h w -> b t c h w", b=b)


VAE_SOURCES = ("https://huggingface.co/stabilityai/sd-vae-ft-mse (diffusers AutoencoderKL, KL-f8, 4 channels)",
               "the first_stage_model.* weights inside https://huggingface.co/Doubiiu/DynamiCrafter model.ckpt")


class AutoencoderKLFirstStage(FrozenModule):
    """The KL-f8 VAE of DynamiCrafter through ``diffusers.AutoencoderKL``, frame by frame.

    ``path`` is a local diffusers model folder (``config.json`` + ``diffusion_pytorch_model.*``);
    ``vae`` passes an already built module instead (tests, custom loaders). Latents are scaled by
    ``scale_factor`` (0.18215, as DynamiCrafter). ``sample_posterior`` follows lvdm (a posterior
    sample when encoding); turn it off for the deterministic posterior mode.
    """

    def __init__(self, path: str | Path | None = None, vae: nn.Module | None = None,
                 scale_factor: float = 0.18215, sample_posterior: bool = True, chunk_size: int = 16):
        super().__init__()
        if (path is None) == (vae is None):
            raise ValueError("AutoencoderKLFirstStage needs exactly one of path= or vae=")
        if vae is None:
            vae = self._load(Path(path))
        self.vae = vae
        self.scale_factor = scale_factor
        self.sample_posterior = sample_posterior
        self.chunk_size = chunk_size
        self.latent_channels = vae.config.latent_channels
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.freeze()

    @staticmethod
    def _load(path: Path) -> nn.Module:
        from diffusers import AutoencoderKL

        config = path / "config.json"
        weights = [path / f"diffusion_pytorch_model.{ext}" for ext in ("safetensors", "bin")]
        missing = [str(config)] if not config.is_file() else []
        if not any(w.is_file() for w in weights):
            missing.append(f"{weights[0]} (or .bin)")
        if missing:
            raise FileNotFoundError(
                f"AutoencoderKL weights not found: missing {', '.join(missing)}. Download a diffusers "
                f"AutoencoderKL folder there, e.g. from {VAE_SOURCES[0]}, or convert {VAE_SOURCES[1]}.")
        return AutoencoderKL.from_pretrained(str(path))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        _check_video(video, self.downsample)
        b = video.shape[0]
        frames = rearrange(video, "b t c h w -> (b t) c h w").to(self.vae.dtype)
        out = []
        for chunk in frames.split(self.chunk_size):
            posterior = self.vae.encode(chunk).latent_dist
            out.append(posterior.sample() if self.sample_posterior else posterior.mode())
        z = torch.cat(out) * self.scale_factor
        return rearrange(z, "(b t) c h w -> b c t h w", b=b)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        frames = rearrange(z, "b c t h w -> (b t) c h w").to(self.vae.dtype) / self.scale_factor
        x = torch.cat([self.vae.decode(chunk).sample for chunk in frames.split(self.chunk_size)])
        return rearrange(x, "(b t) c h w -> b t c h w", b=b)


_WORD = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


class HashTextEncoder(FrozenModule):
    """Tiny deterministic text encoder for CPU runs.

    Lower-cased words are split into word pieces of at most ``piece_len`` characters (later pieces
    marked, as in WordPiece), each piece hashed with CRC32 into ``vocab_size - 2`` ids (0 = pad,
    1 = start). Token + position embeddings are frozen random tables from a fixed seed, followed by
    a frozen LayerNorm: the same caption gives the same tokens in every process. The empty string
    (the null text of classifier-free guidance) is the start token followed by padding.
    """

    def __init__(self, dim: int = 64, max_length: int = 16, vocab_size: int = 4096, piece_len: int = 4,
                 seed: int = 0):
        super().__init__()
        self.dim = dim
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.piece_len = piece_len
        gen = torch.Generator().manual_seed(seed)
        self.token_embedding = nn.Parameter(torch.randn(vocab_size, dim, generator=gen))
        self.position_embedding = nn.Parameter(0.1 * torch.randn(max_length, dim, generator=gen))
        self.norm = nn.LayerNorm(dim)
        self.freeze()

    def token_ids(self, captions: list[str]) -> torch.Tensor:
        if isinstance(captions, str):
            raise ValueError("HashTextEncoder expects a list of captions, got a single string")
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        for row, caption in enumerate(captions):
            pieces = [1]
            for word in _WORD.findall(caption.lower()):
                for i in range(0, len(word), self.piece_len):
                    piece = ("##" if i else "") + word[i:i + self.piece_len]
                    pieces.append(2 + zlib.crc32(piece.encode()) % (self.vocab_size - 2))
            pieces = pieces[: self.max_length]
            ids[row, : len(pieces)] = torch.tensor(pieces)
        return ids

    def forward(self, captions: list[str]) -> torch.Tensor:
        ids = self.token_ids(captions).to(self.token_embedding.device)
        return self.norm(self.token_embedding[ids] + self.position_embedding)


class TinyImageEncoder(FrozenModule):
    """Tiny frozen conv net: image in [-1, 1] -> (B, N, dim) patch tokens plus a pooled token.

    The image is resized to ``image_size`` first (as CLIP resizes to 224), so the token count
    ``(image_size / 8)^2 + 1`` does not depend on the video resolution.
    """

    def __init__(self, dim: int = 64, image_size: int = 32, hidden: int = 32, seed: int = 0):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"TinyImageEncoder image_size must be a multiple of 8, got {image_size}")
        self.dim = dim
        self.image_size = image_size
        self.num_tokens = (image_size // 8) ** 2 + 1
        self.net = nn.Sequential(nn.Conv2d(3, hidden, 4, stride=4), nn.GELU(), nn.Conv2d(hidden, dim, 2, stride=2))
        self.norm = nn.LayerNorm(dim)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p[0].numel())) ** 0.5)
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = F.interpolate(images.to(self.net[0].weight.dtype), size=(self.image_size, self.image_size),
                          mode="bilinear", align_corners=False, antialias=True)
        tokens = rearrange(self.net(x), "b d h w -> b (h w) d")
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.norm(tokens)
