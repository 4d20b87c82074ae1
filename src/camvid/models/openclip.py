"""DynamiCrafter's frozen OpenCLIP ViT-H/14 towers on transformers' CLIP classes.

DynamiCrafter keeps two OpenCLIP models in its checkpoint (lvdm ``FrozenOpenCLIPEmbedder`` and
``FrozenOpenCLIPImageEmbedderV2``):

* ``cond_stage_model.model.*``: the text tower (the visual tower deleted). Captions are tokenised
  to 77 ids (start, BPE tokens, end, then **zeros**, as OpenCLIP pads), run through the first 23 of
  the 24 residual blocks with the causal mask, then ``ln_final``: the "penultimate" layer,
  ``(B, 77, 1024)``.
* ``embedder.model.*``: the image tower (the text transformer deleted). The image in [-1, 1] is
  resized to 224x224 (bicubic, antialiased), mapped to [0, 1] and normalised with the OpenAI CLIP
  mean/std; the output is the transformer's last hidden state of all 257 tokens (class + 16x16
  patches), before ``ln_post`` and the projection, ``(B, 257, 1280)``; DynamiCrafter's resampler
  reads these.

``open_clip`` is not a dependency (it imports torchvision). The key mapping between the OpenCLIP
layout and ``transformers.CLIPTextModel`` / ``CLIPVisionModelWithProjection`` is written here
(:func:`text_key_map`, :func:`vision_key_map`). OpenCLIP keeps a few tensors DynamiCrafter never
runs (``logit_scale``, the text projection, and in the image embedder the leftovers of the deleted
text tower); they are listed in ``UNUSED_*``, checked for presence and shape when loading, and
reported, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from camvid.models.encoders import FrozenModule

__all__ = [
    "OPENCLIP_H14_TEXT", "OPENCLIP_H14_VISION", "OpenCLIPTextEncoder", "OpenCLIPImageEncoder",
    "text_key_map", "vision_key_map", "UNUSED_TEXT_KEYS", "UNUSED_IMAGE_KEYS", "TOKENIZER_SOURCE",
]

# OpenCLIP "ViT-H-14": text width 1024, 16 heads, 24 layers, context 77; vision width 1280,
# 32 layers, patch 14 at 224 px, embed dim 1024. OpenCLIP uses nn.GELU (not OpenAI's quick_gelu).
OPENCLIP_H14_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                         layer_norm_eps=1e-5, projection_dim=1024, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=0)
OPENCLIP_H14_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5,
                           projection_dim=1024)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_SOURCE = ("a CLIP BPE tokenizer folder (vocab.json + merges.txt), e.g. the tokenizer files of "
                    "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (OpenCLIP ViT-H-14 uses "
                    "the OpenAI CLIP vocabulary)")

UNUSED_TEXT_KEYS = ("text_projection", "logit_scale")
UNUSED_IMAGE_KEYS = ("positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
                     "ln_final.weight", "ln_final.bias")

# OpenCLIP residual block -> transformers CLIPEncoderLayer (in_proj_* are split in three, q/k/v)
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _block_map(official: str, ours: str, layers: int) -> dict[str, tuple[str, str]]:
    """ours key -> (official key, transform) for ``layers`` residual blocks; transform is ``qN``/``kN``/
    ``vN`` (third N of in_proj along dim 0) or ``id``."""
    out = {}
    for i in range(layers):
        src, dst = f"{official}.resblocks.{i}", f"{ours}.layers.{i}"
        for o, t in _BLOCK.items():
            for p in ("weight", "bias"):
                out[f"{dst}.{t}.{p}"] = (f"{src}.{o}.{p}", "id")
        for j, name in enumerate("qkv"):
            out[f"{dst}.self_attn.{name}_proj.weight"] = (f"{src}.attn.in_proj_weight", f"chunk{j}")
            out[f"{dst}.self_attn.{name}_proj.bias"] = (f"{src}.attn.in_proj_bias", f"chunk{j}")
    return out


def text_key_map(layers: int = 24) -> dict[str, tuple[str, str]]:
    """``CLIPTextModel`` key -> (OpenCLIP key under ``cond_stage_model.model.``, transform)."""
    out = {"embeddings.token_embedding.weight": ("token_embedding.weight", "id"),
           "embeddings.position_embedding.weight": ("positional_embedding", "id"),
           "final_layer_norm.weight": ("ln_final.weight", "id"),
           "final_layer_norm.bias": ("ln_final.bias", "id")}
    out.update(_block_map("transformer", "encoder", layers))
    return out


def vision_key_map(layers: int = 32) -> dict[str, tuple[str, str]]:
    """``CLIPVisionModelWithProjection`` key -> (OpenCLIP key under ``embedder.model.``, transform)."""
    v = "vision_model"
    out = {f"{v}.embeddings.class_embedding": ("visual.class_embedding", "id"),
           f"{v}.embeddings.position_embedding.weight": ("visual.positional_embedding", "id"),
           f"{v}.embeddings.patch_embedding.weight": ("visual.conv1.weight", "id"),
           f"{v}.pre_layrnorm.weight": ("visual.ln_pre.weight", "id"),
           f"{v}.pre_layrnorm.bias": ("visual.ln_pre.bias", "id"),
           f"{v}.post_layernorm.weight": ("visual.ln_post.weight", "id"),
           f"{v}.post_layernorm.bias": ("visual.ln_post.bias", "id"),
           # OpenCLIP applies x @ proj; a Linear stores the transpose
           "visual_projection.weight": ("visual.proj", "T")}
    out.update(_block_map("visual.transformer", f"{v}.encoder", layers))
    return out


def _apply(value: torch.Tensor, transform: str) -> torch.Tensor:
    if transform == "id":
        return value
    if transform == "T":
        return value.t()
    return value.chunk(3, dim=0)[int(transform[-1])]


def convert_from_official(key_map: dict[str, tuple[str, str]], state: dict[str, torch.Tensor],
                          unused: tuple[str, ...], source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official (prefix-stripped) tensors -> our keys. Strict: every official key must be mapped or
    declared unused, and every key we need must be there. Returns (ours, unused keys found)."""
    needed = {src for src, _ in key_map.values()}
    missing = sorted((needed | set(unused)) - set(state))
    unexpected = sorted(set(state) - needed - set(unused))
    if missing or unexpected:
        raise ValueError(f"{source}: {len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected "
                         f"key(s) {unexpected[:5]} (OpenCLIP ViT-H/14 layout expected)")
    return {ours: _apply(state[src], t) for ours, (src, t) in key_map.items()}, sorted(unused)


def convert_to_official(key_map: dict[str, tuple[str, str]], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_from_official` (without the unused tensors): q/k/v are concatenated
    back into ``in_proj_*``."""
    out: dict[str, torch.Tensor] = {}
    chunks: dict[str, list] = {}
    for ours, (src, t) in key_map.items():
        if t == "id":
            out[src] = state[ours]
        elif t == "T":
            out[src] = state[ours].t()
        else:
            chunks.setdefault(src, [None] * 3)[int(t[-1])] = state[ours]
    out.update({src: torch.cat(parts, dim=0) for src, parts in chunks.items()})
    return out


class _OfficialLayout:
    """Mixin: the module's parameters live under ``self.inner`` and map onto an OpenCLIP layout."""

    key_map: dict[str, tuple[str, str]]
    unused_keys: tuple[str, ...]

    def official_keys(self) -> dict[str, tuple[int, ...]]:
        """OpenCLIP key (prefix-stripped, ``model.`` included) -> shape, for the used keys."""
        own = self.inner.state_dict()
        shapes = {}
        for ours, (src, t) in self.key_map.items():
            shape = tuple(own[ours].shape)
            if t == "T":
                shape = shape[::-1]
            elif t != "id":
                shape = (3 * shape[0], *shape[1:])
            shapes["model." + src] = shape
        return shapes

    def from_official(self, state: dict[str, torch.Tensor], source: str):
        stripped = {}
        for key, value in state.items():
            if not key.startswith("model."):
                raise ValueError(f"{source}: unexpected key {key!r} (OpenCLIP keys start with 'model.')")
            stripped[key[len("model."):]] = value
        ours, unused = convert_from_official(self.key_map, stripped, self.unused_keys, source)
        return {f"inner.{k}": v for k, v in ours.items()}, [f"model.{k}" for k in unused]


class OpenCLIPTextEncoder(_OfficialLayout, FrozenModule):
    """Captions -> OpenCLIP ViT-H/14 penultimate-layer tokens ``(B, 77, 1024)`` (lvdm
    ``FrozenOpenCLIPEmbedder(layer="penultimate")``). ``tokenizer_path``: a CLIP BPE tokenizer
    folder; checked when given, loaded lazily on the first caption."""

    unused_keys = UNUSED_TEXT_KEYS

    def __init__(self, config: dict | None = None, tokenizer_path: str | Path | None = None, layer_offset: int = 1):
        from transformers import CLIPTextConfig, CLIPTextModel

        super().__init__()
        cfg = dict(OPENCLIP_H14_TEXT, **(config or {}))
        self.inner = CLIPTextModel(CLIPTextConfig(**cfg))
        self.key_map = text_key_map(cfg["num_hidden_layers"])
        self.dim = cfg["hidden_size"]
        self.context_length = cfg["max_position_embeddings"]
        self.layer_offset = layer_offset
        self.tokenizer_path = None if tokenizer_path is None else Path(tokenizer_path)
        self._tokenizer = None
        self.freeze()

    def token_ids(self, captions: list[str]) -> torch.Tensor:
        """OpenCLIP tokenisation: start, BPE ids, end, truncated to 77 (the end token kept), zero-padded."""
        if isinstance(captions, str):
            raise ValueError("OpenCLIPTextEncoder expects a list of captions, got a single string")
        if self._tokenizer is None:
            if self.tokenizer_path is None:
                raise ValueError(f"OpenCLIPTextEncoder has no tokenizer: set tokenizer_path= ({TOKENIZER_SOURCE})")
            from transformers import CLIPTokenizer

            check_tokenizer(self.tokenizer_path)
            self._tokenizer = CLIPTokenizer.from_pretrained(str(self.tokenizer_path))
        tok = self._tokenizer
        ids = torch.zeros(len(captions), self.context_length, dtype=torch.long)
        for row, caption in enumerate(captions):
            body = tok(caption, add_special_tokens=False).input_ids
            seq = [tok.bos_token_id, *body][: self.context_length - 1] + [tok.eos_token_id]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids

    def forward(self, captions: list[str]) -> torch.Tensor:
        ids = self.token_ids(captions).to(self.inner.embeddings.token_embedding.weight.device)
        out = self.inner(input_ids=ids, output_hidden_states=True)
        hidden = out.hidden_states[-1 - self.layer_offset]
        return self.inner.final_layer_norm(hidden)


class OpenCLIPImageEncoder(_OfficialLayout, FrozenModule):
    """Images in [-1, 1] -> all OpenCLIP ViT-H/14 tokens ``(B, 257, 1280)`` (lvdm
    ``FrozenOpenCLIPImageEmbedderV2``: last hidden state before ``ln_post``)."""

    unused_keys = UNUSED_IMAGE_KEYS

    def __init__(self, config: dict | None = None):
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        super().__init__()
        cfg = dict(OPENCLIP_H14_VISION, **(config or {}))
        self.inner = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
        self.key_map = vision_key_map(cfg["num_hidden_layers"])
        self.dim = cfg["hidden_size"]
        self.image_size = cfg["image_size"]
        self.num_tokens = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=True, antialias=True)
        x = ((x + 1.0) / 2.0 - self.mean) / self.std
        dtype = self.inner.vision_model.embeddings.patch_embedding.weight.dtype
        return self.inner.vision_model(pixel_values=x.to(dtype)).last_hidden_state


def check_tokenizer(folder: Path) -> None:
    missing = [name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"OpenCLIP tokenizer: {', '.join(str(folder / m) for m in missing)} not found; "
                                f"place {TOKENIZER_SOURCE} there (backbone.kwargs.tokenizer_path)")
