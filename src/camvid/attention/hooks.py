"""The recording hook of the attention modules: the open :func:`camvid.attention.capture.capture`
sessions, and what ``MultiHeadAttention.forward`` calls while one is open.

It lives apart from ``capture`` so that the attention modules (``variants``) and the capture machinery,
which finds those modules in a model, do not import each other.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

__all__ = ["active", "record", "SESSIONS"]


class Recorder(Protocol):
    def record(self, module: nn.Module, q: torch.Tensor, k: torch.Tensor, reg_k: torch.Tensor | None, ctx,
               kind: str | None) -> None: ...


# the open capture sessions, innermost last (camvid.attention.capture adds and removes them)
SESSIONS: list[Recorder] = []


def active() -> bool:
    """True while a capture is open (the only cost the hook adds otherwise)."""
    return bool(SESSIONS)


def record(module: nn.Module, q: torch.Tensor, k: torch.Tensor, reg_k: torch.Tensor | None, ctx, kind: str | None,
           feat_hw: tuple[int, int] | None) -> None:
    """Called by ``MultiHeadAttention.forward`` with q (N, Lq, H, D), k (N, Lk, H, D), reg_k (1, H, R, D)."""
    for session in SESSIONS:
        session.record(module, q, k, reg_k, ctx, kind)
