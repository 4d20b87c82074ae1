"""MotionCtrl + SVD (CVD's baseline row), through diffusers' ``StableVideoDiffusionPipeline``.

MotionCtrl's SVD release (TencentARC/MotionCtrl, ``sgm/motionctrl``) adds its camera motion control
module to every temporal transformer block of SVD's UNet: right after the temporal self-attention,
``y = x + attn1(norm1(x))`` of every frame is concatenated with that frame's ``[R|t]`` (12 numbers)
and projected back, ``y' = cc_projection([y, RT])`` (``Linear(C + 12, C)``, initialised ``[I | 0]``);
it fine-tunes ``cc_projection`` and the blocks' ``attn2`` / ``norm2``. diffusers has no MotionCtrl
class: camvid installs the same module (its MotionCtrl processor, shared with MotionCtrl on
AnimateDiff) on the diffusers UNet's ``temporal_transformer_blocks`` and fills it, with ``attn2`` and
``norm2``, from ``motionctrl_svd.ckpt`` (its ``time_stack`` keys, renamed to diffusers'); the rest of
the UNet is SVD's own (stable-video-diffusion-img2vid). ``RT`` is the relative world-to-camera
``[R|t]`` of every frame (frame 0 = identity), the rows MotionCtrl reads; both CFG halves get it.

A pair (CVD Sec. 5.1): a MotionCtrl text-to-video model renders view 0 (``reference``: a camvid run of
MotionCtrl on AnimateDiff, the CVD Table 1 MotionCtrl row), and MotionCtrl + SVD renders view 1 from
view 0's first frame along the second trajectory, at the pair's size and frame count.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from camvid.baselines.base import SamplingOnlyMethod, first_frame_image, pair_indices, to_signed

__all__ = ["MotionCtrlSVDPairs", "install_motionctrl_svd", "official_to_diffusers", "diffusers_to_official",
           "load_motionctrl_svd", "official_motionctrl_state"]

_TRAINED = ("cc_projection", "attn2", "norm2")
_OFFICIAL = re.compile(r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.?(\d*)\.1\."
                       r"time_stack\.0\.(cc_projection|attn2|norm2)\.(.+)$")
_OURS = re.compile(r"^(down_blocks|mid_block|up_blocks)\.?(\d*)\.attentions\.(\d+)\.temporal_transformer_blocks\.0\."
                   r"(attn1\.processor\.cc_projection|attn2|norm2)\.(.+)$")


def _layers(unet) -> int:
    return int(unet.config.layers_per_block)


def official_to_diffusers(key: str, unet) -> str | None:
    """A MotionCtrl-SVD (sgm ``VideoUNet``) key of a fine-tuned module -> the diffusers UNet's key, or
    ``None`` for any other key. sgm numbers input blocks 1 + level * (L + 1) + j and output blocks
    level * (L + 1) + j (L layers per block; the transformer is sub-module 1)."""
    m = _OFFICIAL.match(key)
    if m is None:
        return None
    part, idx, module, rest = m.groups()
    module = "attn1.processor.cc_projection" if module == "cc_projection" else module
    tail = f"temporal_transformer_blocks.0.{module}.{rest}"
    step = _layers(unet) + 1
    if part == "middle_block":
        return f"mid_block.attentions.0.{tail}"
    i = int(idx)
    if part == "input_blocks":
        level, j = divmod(i - 1, step)
        return f"down_blocks.{level}.attentions.{j}.{tail}"
    level, j = divmod(i, step)
    return f"up_blocks.{level}.attentions.{j}.{tail}"


def diffusers_to_official(key: str, unet) -> str:
    """The inverse of :func:`official_to_diffusers` (for writing files in the released layout)."""
    m = _OURS.match(key)
    if m is None:
        raise ValueError(f"{key} is not a MotionCtrl-SVD fine-tuned key (cc_projection / attn2 / norm2 of a "
                         "temporal transformer block)")
    part, level, j, module, rest = m.groups()
    module = "cc_projection" if module.endswith("cc_projection") else module
    tail = f"1.time_stack.0.{module}.{rest}"
    step = _layers(unet) + 1
    if part == "mid_block":
        return f"model.diffusion_model.middle_block.{tail}"
    if part == "down_blocks":
        return f"model.diffusion_model.input_blocks.{1 + int(level) * step + int(j)}.{tail}"
    return f"model.diffusion_model.output_blocks.{int(level) * step + int(j)}.{tail}"


def _temporal_blocks(unet):
    from diffusers.models.attention import TemporalBasicTransformerBlock

    return [m for m in unet.modules() if isinstance(m, TemporalBasicTransformerBlock)]


def install_motionctrl_svd(unet):
    """MotionCtrl's ``cc_projection`` after the temporal self-attention of every temporal transformer
    block of an SVD UNet; returns the adaptor whose ``feed(RT)`` conditions one UNet call."""
    from camvid.models.animatediff.motionctrl import MotionCtrlAdaptor, MotionCtrlProcessor, _CaptureStream

    processors, attn2 = [], []
    for block in _temporal_blocks(unet):
        attn = block.attn1
        if isinstance(attn.processor, MotionCtrlProcessor):
            raise ValueError("MotionCtrl is installed in this UNet already")
        with torch.device(attn.to_q.weight.device):
            proc = MotionCtrlProcessor(attn.to_q.in_features, base=attn.processor)
        proc.to(dtype=attn.to_q.weight.dtype)
        attn.set_processor(proc)
        block.norm1.register_forward_pre_hook(_CaptureStream(proc))  # the stream y = x + attn1(...) adds to
        processors.append(proc)
        attn2.append(block.attn2)
    if not processors:
        raise ValueError("no temporal transformer blocks in this UNet: not Stable Video Diffusion's")
    return MotionCtrlAdaptor(processors, attn2)


def _trained_keys(unet) -> set[str]:
    return {k for k in unet.state_dict() if _OURS.match(k)}


def load_motionctrl_svd(unet, path: Path) -> int:
    """``motionctrl_svd.ckpt``'s fine-tuned modules into an SVD UNet carrying MotionCtrl; strict: every
    ``cc_projection`` / ``attn2`` / ``norm2`` must be in the file. Returns the number of tensors."""
    from camvid.models.animatediff.checkpoints import load_part, read_state_dict

    raw = read_state_dict(Path(path))
    state = {}
    for key, value in raw.items():
        ours = official_to_diffusers(key, unet)
        if ours is not None:
            state[ours] = value
    wanted = _trained_keys(unet)
    if not state:
        raise ValueError(f"{path}: no MotionCtrl-SVD keys (model.diffusion_model.*.time_stack.0.cc_projection ...); "
                         "is it motionctrl_svd.ckpt?")
    load_part(unet, state, wanted, str(path))
    return len(wanted)


def official_motionctrl_state(unet) -> dict:
    """The fine-tuned modules of a MotionCtrl-carrying SVD UNet under the released (sgm) names."""
    sd = unet.state_dict()
    return {"state_dict": {diffusers_to_official(k, unet): sd[k] for k in sorted(_trained_keys(unet))}}


def relative_rt(c2w: torch.Tensor) -> torch.Tensor:
    """(T, 4, 4) camera-to-world relative to frame 0 -> (T, 12) world-to-camera ``[R|t]`` rows."""
    from camvid.geometry import invert_rigid

    return invert_rigid(c2w.float())[..., :3, :4].reshape(c2w.shape[0], 12)


class MotionCtrlSVDPairs(SamplingOnlyMethod):
    """View 0 from the MotionCtrl text-to-video ``reference``, view 1 from MotionCtrl + SVD.

    ``reference(batch, seed, steps)`` renders a one-video batch ((1, T, 3, H, W) in [-1, 1]); it is set
    with :meth:`set_reference` by the sampling layer (a trained camvid run), so building the baseline
    never needs the run."""

    def __init__(self, pipe, adaptor, svd_kwargs: dict | None = None, default_steps: int = 25):
        super().__init__()
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)
        self.unet, self.vae, self.image_encoder = pipe.unet, pipe.vae, pipe.image_encoder
        self.adaptor = adaptor
        self.svd_kwargs = dict(svd_kwargs or {})
        self.default_steps = int(default_steps)
        self.reference = None
        self.supports = {"image", "camera"}

    def set_reference(self, reference) -> None:
        self.reference = reference

    @torch.no_grad()
    def generate(self, batch: dict, *, seed: int, steps: int | None = None, guidance: dict | None = None):
        if self.reference is None:
            raise RuntimeError("MotionCtrl+SVD renders view 0 of a pair with a MotionCtrl text-to-video run: none is "
                               "set (model.reference_run, set by src/train.py's sample stage / src/sample.py)")
        steps = int(steps or self.default_steps)
        T = int(batch["K"].shape[1])
        height, width = (int(s) for s in batch["video"].shape[-2:])
        device = next(self.unet.parameters()).device
        out = [None] * int(batch["K"].shape[0])
        for a, b in pair_indices(batch):
            single = {k: (v[a:a + 1] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
            single["num_views"] = 1
            out[a] = self.reference(single, seed=seed, steps=steps)[0].float().cpu()
            rt = relative_rt(batch["c2w"][b]).to(device, self.unet.dtype)[None]
            halves = 2 if float(self.svd_kwargs.get("max_guidance_scale", 3.0)) > 1 else 1
            gen = torch.Generator(device=device).manual_seed(int(seed) + 1)
            with self.adaptor.feed(rt.repeat(halves, 1, 1)):
                frames = self.pipe(image=first_frame_image(out[a]), height=height, width=width, num_frames=T,
                                   num_inference_steps=steps, generator=gen, output_type="pt",
                                   **self.svd_kwargs).frames[0]
            out[b] = to_signed(frames)
        return torch.stack(out).cpu()
