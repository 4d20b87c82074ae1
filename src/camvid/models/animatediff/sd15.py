"""The frozen Stable Diffusion 1.5 encoders of the full-size AnimateDiff family: the KL-f8 VAE and the
CLIP ViT-L/14 text tower (77 tokens x 768), built from SD1.5's published config values.

They are built with random weights (on ``meta`` if asked) and filled by
:func:`camvid.models.animatediff.checkpoints.load_animatediff_weights` from a local
``stable-diffusion-v1-5`` folder (``vae/``, ``text_encoder/``, ``tokenizer/``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from camvid.models.encoders import AutoencoderKLFirstStage, FrozenModule

__all__ = ["SD15_VAE_CONFIG", "SD15_TEXT_CONFIG", "CLIPTextTokens", "build_sd15_encoders"]

SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)

SD15_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)


class CLIPTextTokens(FrozenModule):
    """Captions -> CLIP last hidden state (B, 77, 768), the tokens SD1.5's cross-attention reads."""

    def __init__(self, text_model: nn.Module, tokenizer=None):
        super().__init__()
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.dim = text_model.config.hidden_size
        self.freeze()

    def load_tokenizer(self, folder: str | Path) -> None:
        from transformers import CLIPTokenizer

        folder = Path(folder)
        if not (folder / "vocab.json").is_file():
            raise FileNotFoundError(f"CLIP tokenizer not found: {folder / 'vocab.json'} (the tokenizer/ folder of "
                                    "huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5)")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))

    def forward(self, captions: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError("CLIPTextTokens has no tokenizer: load SD1.5 weights (load_pretrained) first")
        ids = self.tokenizer(
            list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(next(self.text_model.parameters()).device)
        return self.text_model(ids).last_hidden_state


def build_sd15_encoders(device: torch.device | str | None = None) -> tuple[AutoencoderKLFirstStage, CLIPTextTokens]:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device if device is not None else "cpu"):
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
    return AutoencoderKLFirstStage(vae=vae, scale_factor=0.18215, sample_posterior=True), CLIPTextTokens(text)
