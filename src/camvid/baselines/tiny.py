"""Tiny random stand-ins of the released systems the sampling-only baselines load (SD1.5 + AnimateDiff
motion adapter + SparseCtrl RGB, CameraCtrl; Stable Video Diffusion + MotionCtrl), in the same diffusers
classes and on-disk layout as the real weights.

Two uses: ``scale=tiny`` rows build them in memory (there is nothing to train in a sampling-only row,
so a tiny row shows that the pipeline runs, not how good a baseline is), and the tests save them to a
folder and load them back through the same code path as the full-size files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["tiny_sparsectrl_components", "tiny_svd_components", "save_tiny_sparsectrl", "save_tiny_svd",
           "tiny_clip_tokenizer"]

# One width everywhere keeps the parts compatible (text width = UNet cross-attention width).
_WIDTH = (32, 64)
_TEXT_DIM = 32


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable-character table (the BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, [chr(c) for c in chars]))


def tiny_clip_tokenizer(folder: Path):
    """A character-level CLIP tokenizer (no merges): every byte and byte-at-word-end is a token."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(alphabet + [a + "</w>" for a in alphabet]
                                              + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    tok.save_pretrained(str(folder))
    return tok


def tiny_sparsectrl_components(seed: int = 0, tokenizer_dir: Path | None = None) -> dict:
    """SD1.5-shaped UNet / VAE / CLIP text tower, motion adapter and SparseCtrl RGB at tiny width."""
    from diffusers import AutoencoderKL, MotionAdapter, SparseControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=_WIDTH, layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT_DIM, norm_num_groups=8, attention_head_dim=8)
    adapter = MotionAdapter(block_out_channels=_WIDTH, motion_layers_per_block=2, motion_num_attention_heads=2,
                            motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=False)
    vae = AutoencoderKL(block_out_channels=_WIDTH, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=32)
    controlnet = SparseControlNetModel(
        block_out_channels=_WIDTH, layers_per_block=2, in_channels=4, conditioning_channels=4,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"), cross_attention_dim=_TEXT_DIM,
        norm_num_groups=8, attention_head_dim=8, motion_num_attention_heads=2, motion_max_seq_length=32,
        use_simplified_condition_embedding=True, conditioning_embedding_out_channels=(16, 32))
    if tokenizer_dir is not None:
        tokenizer = tiny_clip_tokenizer(Path(tokenizer_dir))
    else:  # in memory: the vocabulary files only pass through a temporary folder
        import tempfile

        with tempfile.TemporaryDirectory(prefix="camvid_tok_") as tmp:
            tokenizer = tiny_clip_tokenizer(Path(tmp))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=_TEXT_DIM, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                        projection_dim=_TEXT_DIM, bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return {"unet": unet, "motion_adapter": adapter, "vae": vae, "controlnet": controlnet,
            "text_encoder": text, "tokenizer": tokenizer}


def tiny_svd_components(seed: int = 0) -> dict:
    """Stable Video Diffusion's UNet / temporal-decoder VAE / CLIP image tower at tiny width."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=_WIDTH, layers_per_block=2, sample_size=16, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=_TEXT_DIM, num_attention_heads=(2, 4), projection_class_embeddings_input_dim=3 * 8,
        addition_time_embed_dim=8)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=_WIDTH, in_channels=3, out_channels=3, latent_channels=4,
                                       down_block_types=("DownEncoderBlock2D",) * 2, sample_size=32)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=_TEXT_DIM, projection_dim=_TEXT_DIM, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, intermediate_size=37, patch_size=32))  # the pipeline feeds CLIP 224x224 images
    # SVD's released scheduler settings (v-prediction EDM sigmas)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    feature_extractor = CLIPImageProcessor(crop_size=32, size=32)
    return {"unet": unet, "vae": vae, "image_encoder": image_encoder, "scheduler": scheduler,
            "feature_extractor": feature_extractor}


def save_tiny_sparsectrl(folder: str | Path, seed: int = 0) -> Path:
    """Tiny SD1.5 (unet/, vae/, text_encoder/, tokenizer/), motion adapter and SparseCtrl RGB folders in
    the layout the SparseCtrl baselines read (``camvid.baselines.weights.LAYOUT``)."""
    from camvid.baselines.weights import LAYOUT

    folder = Path(folder)
    sd = folder / LAYOUT["sd15"]
    parts = tiny_sparsectrl_components(seed, tokenizer_dir=sd / "tokenizer")
    for part in ("unet", "vae", "text_encoder"):
        parts[part].save_pretrained(str(sd / part))
    parts["motion_adapter"].save_pretrained(str(folder / LAYOUT["motion_adapter"]))
    parts["controlnet"].save_pretrained(str(folder / LAYOUT["sparsectrl"]))
    return folder


def save_tiny_svd(folder: str | Path, seed: int = 0) -> Path:
    """A tiny Stable Video Diffusion pipeline folder (``LAYOUT["svd"]``)."""
    from diffusers import StableVideoDiffusionPipeline

    from camvid.baselines.weights import LAYOUT

    target = Path(folder) / LAYOUT["svd"]
    StableVideoDiffusionPipeline(**tiny_svd_components(seed)).save_pretrained(str(target))
    return Path(folder)
