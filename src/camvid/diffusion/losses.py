"""The denoising training loss, written once for every method, with classifier-free-guidance dropout.

Condition dropout (per sample). DynamiCrafter, and CamI2V which inherits its ``get_batch_input``,
draw ONE uniform number r per sample with ``uncond_prob = p``: text is dropped for r < 2p and the
image for p <= r < 3p, i.e. text only, both, image only with p each. That is a joint distribution
of the two flags; :class:`CondDropout` describes it by ``p_text``, ``p_image`` and ``p_text_and_image``
and realises any valid triple with the same one-number band construction (``p_text_and_image=None``
means independent drops, p_text * p_image). The camera is dropped independently with ``p_camera``.
CamI2V's released code never drops the camera in training (its e(0, c_it) branch is then the
base model's behaviour without the camera signal), so the CamI2V preset has ``p_camera = 0``.

The loss is the plain MSE over all latent frames, conditioning frame included, as DynamiCrafter
trains (its ``p_losses`` averages over every element).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from camvid.diffusion.ddim import randn
from camvid.diffusion.schedule import q_sample, training_target
from camvid.models.base import VideoDiffusionModel


@dataclass(frozen=True)
class CondDropout:
    p_text: float = 0.0
    p_image: float = 0.0
    p_text_and_image: float | None = None  # None: independent drops
    p_camera: float = 0.0

    def __post_init__(self):
        for name in ("p_text", "p_image", "p_camera"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"cond_dropout {name} must be in [0, 1], got {p}")
        both = self.both
        if not (max(0.0, self.p_text + self.p_image - 1.0) - 1e-12 <= both <= min(self.p_text, self.p_image)
                + 1e-12):
            raise ValueError(f"cond_dropout p_text_and_image={both} is impossible with p_text={self.p_text} "
                             f"and p_image={self.p_image}")

    @property
    def both(self) -> float:
        return self.p_text * self.p_image if self.p_text_and_image is None else self.p_text_and_image

    @classmethod
    def dynamicrafter(cls, uncond_prob: float = 0.05, p_camera: float = 0.0) -> CondDropout:
        """DynamiCrafter / CamI2V: text only, image only and both, each with ``uncond_prob``."""
        return cls(p_text=2 * uncond_prob, p_image=2 * uncond_prob, p_text_and_image=uncond_prob,
                   p_camera=p_camera)

    @classmethod
    def from_config(cls, cfg: CondDropout | Mapping | None) -> CondDropout:
        if cfg is None:
            return cls()
        if isinstance(cfg, CondDropout):
            return cfg
        cfg = dict(cfg)
        if "uncond_prob" in cfg:  # DynamiCrafter's single knob
            extra = sorted(set(cfg) - {"uncond_prob", "p_camera"})
            if extra:
                raise ValueError(f"cond_dropout uncond_prob cannot be combined with {extra}")
            return cls.dynamicrafter(float(cfg["uncond_prob"]), float(cfg.get("p_camera", 0.0)))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown cond_dropout option(s) {unknown}; expected some of {sorted(names)} "
                             "or uncond_prob")
        return cls(**cfg)

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Per-sample (B,) bool drop flags {"text", "image", "camera"}."""
        gen_device = generator.device if generator is not None else torch.device(device)
        r = torch.rand(batch_size, generator=generator, device=gen_device, dtype=torch.float64)
        r_cam = torch.rand(batch_size, generator=generator, device=gen_device, dtype=torch.float64)
        # bands on [0, 1): text = [0, p_text), image = [p_text - both, p_text - both + p_image)
        image_lo = self.p_text - self.both
        flags = {
            "text": r < self.p_text,
            "image": (r >= image_lo) & (r < image_lo + self.p_image),
            "camera": r_cam < self.p_camera,
        }
        return {k: v.to(device) for k, v in flags.items()}


def diffusion_loss(model: VideoDiffusionModel, batch: dict, *, generator: torch.Generator | None = None,
                   cond_dropout: CondDropout | Mapping | None = None,
                   timestep_range: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Noise the encoded video at uniform random timesteps and regress eps or v (per
    ``model.parameterization``). ``timestep_range`` (lo, hi), both included, narrows the timesteps
    drawn (default: all of them). Returns {"loss": scalar with grad, "loss_per_sample": (B,),
    "timesteps": (B,), "drop_text" / "drop_image" / "drop_camera": (B,) bool} (all but "loss" detached).
    Deterministic given ``generator`` (and a deterministic model)."""
    dropout = CondDropout.from_config(cond_dropout)
    supports = getattr(model, "supports", None)
    if supports is not None:
        for name in ("text", "image", "camera"):
            p = {"text": dropout.p_text, "image": dropout.p_image, "camera": dropout.p_camera}[name]
            if p > 0 and name not in supports:
                raise ValueError(f"cond_dropout p_{name}={p} but {type(model).__name__} has no {name} "
                                 f"condition (supports {sorted(supports)})")

    alphas_cumprod = model.alphas_cumprod
    num_train = len(alphas_cumprod)
    with torch.no_grad():
        x0 = model.encode_video(batch["video"])
    B = x0.shape[0]

    gen_device = generator.device if generator is not None else x0.device
    lo, hi = (0, num_train - 1) if timestep_range is None else (int(timestep_range[0]), int(timestep_range[1]))
    if not 0 <= lo <= hi < num_train:
        raise ValueError(f"timestep_range (model.train_timesteps) {list(timestep_range)} must be [lo, hi] with "
                         f"0 <= lo <= hi <= {num_train - 1}")
    t = torch.randint(lo, hi + 1, (B,), generator=generator, device=gen_device).to(x0.device)
    noise = randn(tuple(x0.shape), generator, x0.device, x0.dtype)
    cond = model.conditions(batch, x0)
    # views of one scene (CVD pairs, laid out [a0, b0, a1, b1, ...]) share their drop decisions:
    # they share one caption, and a pair with the prompt on one side only is no training signal
    num_views = cond.camera.num_views if cond.camera is not None else int(batch.get("num_views", 1))
    if B % num_views:
        raise ValueError(f"batch of {B} latents is not a whole number of {num_views}-view groups")
    drops = {k: v.repeat_interleave(num_views)
             for k, v in dropout.sample(B // num_views, generator, x0.device).items()}
    cond = cond.with_drops(text=drops["text"], image=drops["image"], camera=drops["camera"])

    scale_arr = getattr(model, "scale_arr", None)
    if scale_arr is not None:
        # DynamiCrafter's dynamic rescale: the clean latent is shrunk per timestep before noising
        x0 = x0 * scale_arr.to(x0.device, torch.float64)[t].reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    z_t = q_sample(x0, t, noise, alphas_cumprod)
    target = training_target(x0, noise, t, alphas_cumprod, model.parameterization)

    output = model.denoise(z_t, t, cond)
    if output.shape != target.shape:
        raise ValueError(f"model.denoise returned shape {tuple(output.shape)}, expected {tuple(target.shape)}")
    per_sample = (output.float() - target.float()).pow(2).flatten(1).mean(1)
    return {
        "loss": per_sample.mean(),
        "loss_per_sample": per_sample.detach(),
        "timesteps": t,
        "drop_text": drops["text"],
        "drop_image": drops["image"],
        "drop_camera": drops["camera"],
    }
