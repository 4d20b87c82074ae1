"""Layers shared by the backbones and the cross-frame attention modules.

``FeedForward`` is the gated-GELU MLP of lvdm (DynamiCrafter's UNet, the camera pose encoder) and of
diffusers (CVD's synchronisation module): ``net.0.proj`` (``dim -> 2 * inner``), ``net.1`` dropout,
``net.2`` (``inner -> dim``), the checkpoints' keys. Its gate, ``h * gelu(gate)`` of the two halves
of ``net.0.proj``'s output, is one autograd function (:func:`gated_gelu`): the same values as the
three PyTorch ops, with less memory. Written with those ops, autograd keeps ``gelu(gate)`` for the
backward pass (one ``(tokens, inner)`` tensor per feed-forward, on top of the projection's output it
keeps anyway) and the backward pass makes four such tensors and a concatenation; here the forward
keeps only the projection's output and the backward writes both halves of its gradient in place into
one tensor. In a training step on the CPU every fresh tensor also costs the kernel's zeroing of its
pages: the 32x32 feed-forward of a 16-frame pair takes 0.87x the time of the three ops and keeps
0.77x the memory for the backward pass (``python benchmarks/feedforward.py``; docs/performance.md,
"Feed-forward").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["GEGLU", "FeedForward", "gated_gelu"]


class _GatedGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj: torch.Tensor) -> torch.Tensor:
        h, gate = proj.chunk(2, dim=-1)
        out = F.gelu(gate)
        out.mul_(h)  # h * gelu(gate): the same product, no second tensor
        ctx.save_for_backward(proj)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (proj,) = ctx.saved_tensors
        h, gate = proj.chunk(2, dim=-1)
        grad_proj = torch.empty_like(proj, memory_format=torch.contiguous_format)
        grad_h, grad_gate = grad_proj.chunk(2, dim=-1)
        torch.ops.aten.gelu.out(gate, out=grad_h)  # d/dh = gelu(gate)
        grad_h.mul_(grad)
        torch.mul(grad, h, out=grad_gate)  # d/dgate = grad * h * gelu'(gate)
        torch.ops.aten.gelu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)
        return grad_proj


def gated_gelu(proj: torch.Tensor) -> torch.Tensor:
    """``h * F.gelu(gate)`` for ``h, gate = proj.chunk(2, dim=-1)`` (exact GELU, as lvdm and diffusers),
    equal values and gradients; saves only ``proj`` for the backward pass (no double backward)."""
    if proj.shape[-1] % 2:
        raise ValueError(f"gated_gelu needs an even last dimension (value and gate halves), got {proj.shape[-1]}")
    return _GatedGelu.apply(proj)


class GEGLU(nn.Module):
    """``proj`` (``dim_in -> 2 * dim_out``), then :func:`gated_gelu`."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gated_gelu(self.proj(x))


class FeedForward(nn.Module):
    """Gated-GELU MLP, ``ff.net.{0.proj, 2}`` in the checkpoints."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
