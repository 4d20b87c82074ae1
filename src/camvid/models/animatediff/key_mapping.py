"""State-dict key mapping between the official AnimateDiff / CameraCtrl / CVD UNet
(``UNet3DConditionModelPoseCond``) and ours (diffusers ``UNetMotionModel`` + our adaptors).

Only the motion modules are named differently; the SD1.5 spatial layers, the pose-adaptor
processors and CVD's ``epi_modules`` share one layout. Per motion module (``P`` =
``{down_blocks.i | up_blocks.i}.motion_modules.j``):

=====================================================================  ===============================================
official                                                                ours
=====================================================================  ===============================================
``P.temporal_transformer.{norm, proj_in, proj_out}``                   ``P.{norm, proj_in, proj_out}``
``P.temporal_transformer.transformer_blocks.k.attention_blocks.0.X``   ``P.transformer_blocks.k.attn1.X``
``P.temporal_transformer.transformer_blocks.k.attention_blocks.1.X``   ``P.transformer_blocks.k.attn2.X``
``...transformer_blocks.k.norms.0`` / ``norms.1`` / ``ff_norm``        ``...transformer_blocks.k.norm1`` / ``norm2`` / ``norm3``
``...transformer_blocks.k.ff.net.{0.proj, 2}``                         same
``...attention_blocks.0.processor.qkv_merge`` (CameraCtrl)             ``...attn1.processor.qkv_merge``
``...attention_blocks.{0,1}.pos_encoder.pe`` (two copies)              ``...transformer_blocks.k.pos_embed.pe`` (one)
=====================================================================  ===============================================

The official model keeps one sinusoidal table per attention block; diffusers keeps one per
transformer block and adds it before both attentions, which is the same computation. Going to ours
the two copies must agree (checked); going to the official layout the table is written twice.
"""

from __future__ import annotations

import re

import torch

__all__ = [
    "official_to_ours",
    "ours_to_official",
    "convert_official_state_dict",
    "convert_to_official_state_dict",
]

_MOTION = re.compile(r"^(?P<site>(?:down_blocks|up_blocks)\.\d+\.motion_modules\.\d+\.)(?P<rest>.*)$")
_OFFICIAL_BLOCK = re.compile(r"^transformer_blocks\.(?P<k>\d+)\.(?P<rest>.*)$")

# Official sub-names inside a temporal transformer block -> ours.
_BLOCK_OFFICIAL_TO_OURS = (
    ("attention_blocks.0.", "attn1."),
    ("attention_blocks.1.", "attn2."),
    ("norms.0.", "norm1."),
    ("norms.1.", "norm2."),
    ("ff_norm.", "norm3."),
)
_PE_OFFICIAL = ("attention_blocks.0.pos_encoder.pe", "attention_blocks.1.pos_encoder.pe")


def official_to_ours(key: str) -> str | None:
    """Our name for an official UNet key; ``None`` for the redundant second positional table."""
    m = _MOTION.match(key)
    if m is None:
        return key
    site, rest = m.group("site"), m.group("rest")
    if not rest.startswith("temporal_transformer."):
        raise ValueError(f"unexpected motion-module key {key!r} (no temporal_transformer.)")
    rest = rest[len("temporal_transformer."):]
    b = _OFFICIAL_BLOCK.match(rest)
    if b is None:
        return site + rest
    k, inner = b.group("k"), b.group("rest")
    if inner == _PE_OFFICIAL[0]:
        return f"{site}transformer_blocks.{k}.pos_embed.pe"
    if inner == _PE_OFFICIAL[1]:
        return None
    for old, new in _BLOCK_OFFICIAL_TO_OURS:
        if inner.startswith(old):
            return f"{site}transformer_blocks.{k}.{new}{inner[len(old):]}"
    return f"{site}transformer_blocks.{k}.{inner}"


def ours_to_official(key: str) -> list[str]:
    """Official name(s) of one of our UNet keys (two for the shared positional table)."""
    m = _MOTION.match(key)
    if m is None:
        return [key]
    site, rest = m.group("site"), m.group("rest")
    b = _OFFICIAL_BLOCK.match(rest)
    if b is None:
        return [f"{site}temporal_transformer.{rest}"]
    k, inner = b.group("k"), b.group("rest")
    prefix = f"{site}temporal_transformer.transformer_blocks.{k}."
    if inner == "pos_embed.pe":
        return [prefix + pe for pe in _PE_OFFICIAL]
    for old, new in _BLOCK_OFFICIAL_TO_OURS:
        if inner.startswith(new):
            return [prefix + old + inner[len(new):]]
    return [prefix + inner]


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official-layout UNet state dict (full or partial) renamed to ours."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        ours = official_to_ours(key)
        if ours is None:
            first = key.replace(_PE_OFFICIAL[1], _PE_OFFICIAL[0])
            if first in state_dict and not _same_table(state_dict[first], value):
                raise ValueError(f"positional tables {first!r} and {key!r} differ; cannot merge them")
            continue
        if ours in out:
            raise ValueError(f"two official keys map to {ours!r} (second: {key!r})")
        out[ours] = value
    return out


def convert_to_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our UNet state dict renamed to the official layout (positional tables duplicated)."""
    return {name: value for key, value in state_dict.items() for name in ours_to_official(key)}


def _same_table(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:
        return True
    return torch.equal(a, b)
