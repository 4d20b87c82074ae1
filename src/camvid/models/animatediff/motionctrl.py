"""MotionCtrl's camera motion control module (CMCM) in the AnimateDiff motion modules.

MotionCtrl (arXiv 2312.03641) conditions the temporal transformers on the camera: right after the
first temporal self-attention of a block, the hidden state ``y = x + attn1(norm1(x))`` of every
frame is concatenated with that frame's ``[R|t]`` (relative world-to-camera, 12 numbers) and
projected back, ``y' = cc_projection([y, RT])``. ``cc_projection`` is ``Linear(C + 12, C)``
initialised to ``[I | 0]`` (bias 0), so a fresh module leaves the backbone unchanged. The same
placement as our MotionCtrl on DynamiCrafter (``camvid.models.camera.injection.add_motionctrl``),
applied to every transformer block of every AnimateDiff motion module (CVD's MotionCtrl baseline
row uses MotionCtrl's AnimateDiff release).

diffusers' ``BasicTransformerBlock`` adds the attention output to the residual stream itself, so
the processor of ``attn1`` returns ``y' - x``; the stream ``x`` is read by a forward pre-hook on
``norm1`` (the block's first call on it). Trainable: ``cc_projection`` and the blocks' second
temporal attention ``attn2`` (MotionCtrl's recipe on VideoCrafter/DynamiCrafter).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from camvid.models.animatediff.unet import motion_module_sites

__all__ = ["MotionCtrlProcessor", "MotionCtrlAdaptor", "install_motionctrl"]

POSE_DIM = 12


class MotionCtrlProcessor(nn.Module):
    """``attn1`` processor with MotionCtrl's ``cc_projection``; without fed cameras it is the wrapped
    base processor (the plain backbone)."""

    def __init__(self, hidden_size: int, base: object | None = None, pose_dim: int = POSE_DIM):
        super().__init__()
        self.cc_projection = nn.Linear(hidden_size + pose_dim, hidden_size)
        with torch.no_grad():
            self.cc_projection.weight.zero_()
            self.cc_projection.weight[:, :hidden_size].copy_(torch.eye(hidden_size))
            self.cc_projection.bias.zero_()
        self.base = base if base is not None else AttnProcessor2_0()
        self.rt: torch.Tensor | None = None  # (B, T, 12), set by MotionCtrlAdaptor.feed
        self.stream: torch.Tensor | None = None  # block input x, set by the norm1 pre-hook

    def forward(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                attention_mask=None, temb=None, **kwargs) -> torch.Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if self.rt is None:
            return out
        x = self.stream
        if x is None or x.shape != out.shape:
            raise RuntimeError("MotionCtrl: the motion block's input was not captured (norm1 pre-hook missing)")
        per_video = x.shape[0] // self.rt.shape[0]  # tokens are (B*h*w, T, C), batch-major
        rt = self.rt.to(x.dtype).repeat_interleave(per_video, dim=0)
        y = x + out
        return self.cc_projection(torch.cat([y, rt], dim=-1)) - x


class _CaptureStream:
    """Forward pre-hook on ``norm1``: hands the block input to the processor (a small object, so a
    deep copy of the model stays self-consistent)."""

    def __init__(self, processor: MotionCtrlProcessor):
        self.processor = processor

    def __call__(self, module, args):
        if self.processor.rt is not None:
            self.processor.stream = args[0]


class MotionCtrlAdaptor:
    """Handle on the processors installed in one UNet (their keys read
    ``...motion_modules.j.transformer_blocks.k.attn1.processor.cc_projection.*``)."""

    def __init__(self, processors: list[MotionCtrlProcessor], attn2: list[nn.Module]):
        self.processors = processors
        self.attn2 = attn2

    def parameters(self):
        for proc in self.processors:
            yield from proc.cc_projection.parameters()
        for attn in self.attn2:
            yield from attn.parameters()

    @contextmanager
    def feed(self, rt: torch.Tensor | None):
        """``rt`` (B, T, 12) for one UNet call; ``None`` runs the plain backbone."""
        try:
            for proc in self.processors:
                proc.rt = rt
            yield
        finally:
            for proc in self.processors:
                proc.rt = None
                proc.stream = None


def install_motionctrl(unet, module_device: torch.device | str | None = None) -> MotionCtrlAdaptor:
    processors, attn2 = [], []
    for part, i, _ in motion_module_sites(unet):
        for motion_module in getattr(unet, part)[i].motion_modules:
            for block in motion_module.transformer_blocks:
                attn = block.attn1
                if isinstance(attn.processor, MotionCtrlProcessor):
                    raise ValueError(f"{part}.{i} already has MotionCtrl installed")
                with torch.device(module_device if module_device is not None else attn.to_q.weight.device):
                    proc = MotionCtrlProcessor(attn.inner_dim, base=attn.processor)
                proc.to(dtype=attn.to_q.weight.dtype)
                attn.set_processor(proc)
                block.norm1.register_forward_pre_hook(_CaptureStream(proc))
                processors.append(proc)
                if block.attn2 is not None:
                    attn2.append(block.attn2)
    return MotionCtrlAdaptor(processors, attn2)
