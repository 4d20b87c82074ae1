"""Drop-in use of the cross-frame modules inside diffusers motion modules (AnimateDiff, CameraCtrl).

diffusers' ``AnimateDiffTransformer3D`` reshapes features to ``(B*h*w, T, C)`` tokens and calls
``attn1.processor(attn, hidden_states, ...)`` with the *normalised* tokens. ``CrossFrameAttnProcessor``
replaces that processor: it runs the standard attention unchanged and adds the cross-frame module's
update computed on the same normalised tokens (CamI2V's "add to the main branch")::

    slot = ContextSlot()
    for name, module in unet.named_modules():
        if name.endswith("motion_modules.0.transformer_blocks.0.attn1"):   # the blocks you choose
            module.set_processor(CrossFrameAttnProcessor(
                build_cross_frame_attention("epipolar", module.query_dim, module.heads), slot))
    slot.ctx = AttentionContext(K=K, c2w=c2w, image_hw=(H, W), cond_index=cond_index)  # per forward
    unet(latents, t, encoder_hidden_states=text, ...)

The processor is an ``nn.Module``, so diffusers registers it under ``attn1.processor`` and its
parameters (``...attn1.processor.cross_frame.*``) train and save with the UNet. UNetMotionModel
passes no ``cross_attention_kwargs`` to motion modules, hence the shared ``ContextSlot``; a context
passed as ``attention_context=`` (where a caller can) takes precedence. The feature size is
inferred from the token count and the aspect ratio of ``ctx.image_hw``. With no context set, the
processor is exactly the standard attention.
"""

from __future__ import annotations

import torch
from torch import nn

from camvid.attention.context import AttentionContext
from camvid.attention.variants import frames_from_temporal_tokens, temporal_tokens_from_frames

__all__ = ["ContextSlot", "CrossFrameAttnProcessor"]


class ContextSlot:
    """Mutable holder shared by all processors of one model; set ``ctx`` before each forward."""

    def __init__(self, ctx: AttentionContext | None = None):
        self.ctx = ctx


class CrossFrameAttnProcessor(nn.Module):
    def __init__(self, cross_frame: nn.Module, slot: ContextSlot | None = None):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.cross_frame = cross_frame
        self.slot = slot if slot is not None else ContextSlot()
        self._base = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 attention_context: AttentionContext | None = None) -> torch.Tensor:
        out = self._base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        ctx = attention_context if attention_context is not None else self.slot.ctx
        if ctx is None or encoder_hidden_states is not None:
            return out
        if hidden_states.dim() != 3:
            raise ValueError(f"motion-module tokens must be (B*h*w, T, C), got {tuple(hidden_states.shape)}")
        batch = ctx.batch_size
        if batch is None or hidden_states.shape[0] % batch:
            raise ValueError(
                f"{hidden_states.shape[0]} token rows do not split into the context's batch of {batch} clips"
            )
        feat_hw = ctx.infer_feat_hw(hidden_states.shape[0] // batch)
        x = frames_from_temporal_tokens(hidden_states, batch)
        delta = self.cross_frame(x, ctx, feat_hw)
        return out + temporal_tokens_from_frames(delta) / attn.rescale_output_factor
