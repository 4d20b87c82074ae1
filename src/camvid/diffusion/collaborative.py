"""CVD collaborative sampling: M > 2 videos of one scene from a model trained on video pairs.

At every denoising step a set of pairs P is chosen and the pair model runs on each pair; the output
of video i is the average of its outputs over the pairs it belongs to (CVD sec. 4.3, Algorithm 1,
weights w_i = 1 / |{(i, j) in P}|):
    exhaustive   all M(M-1)/2 unordered pairs (each video in M-1 pairs);
    partition    a fresh random split of the M videos into M/2 pairs, ``num_partitions`` = Q times
                 (Q > 1 is the paper's multi-partitioning; M must be even, as in the official code).
``recurrent_steps`` = R repeats each step R times with re-noising in between (Algorithm 1; the
paper uses R=1 for pairs, R=4/Q=1 for 4 views, R=6/Q=2 for 6 views).

All pairs of a step (and their guidance branches) go through ONE ``model.denoise`` call, laid out
[a0, b0, a1, b1, ...] with ``camera.num_views = 2``. Input conditions hold G groups of M videos,
batch order [g0 v0 .. g0 v(M-1), g1 v0, ...]; one pair set is drawn per step and used by every group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from camvid.diffusion.ddim import ddim_sample
from camvid.diffusion.guidance import Guidance, guided_output
from camvid.diffusion.sampler import prepare_conditions, start_sampling
from camvid.models.base import Conditions, VideoDiffusionModel

PAIR_STRATEGIES = ("exhaustive", "partition")


def select_pairs(num_videos: int, strategy: str = "partition", num_partitions: int = 1,
                 generator: torch.Generator | None = None) -> list[tuple[int, int]]:
    """The pairs (i, j) the pair model is run on at one step."""
    if num_videos < 2:
        raise ValueError(f"collaborative sampling needs num_videos >= 2, got {num_videos}")
    if strategy == "exhaustive":
        return [(i, j) for i in range(num_videos) for j in range(i + 1, num_videos)]
    if strategy != "partition":
        raise ValueError(f"unknown pair strategy {strategy!r}; expected one of {PAIR_STRATEGIES}")
    if num_videos % 2:
        raise ValueError(f"pair strategy 'partition' needs an even num_videos, got {num_videos}; "
                         "use strategy='exhaustive'")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    pairs = []
    device = generator.device if generator is not None else "cpu"
    for _ in range(num_partitions):
        perm = torch.randperm(num_videos, generator=generator, device=device).tolist()
        pairs += [(perm[k], perm[k + 1]) for k in range(0, num_videos, 2)]
    return pairs


def gather_views(cond: Conditions, index: torch.Tensor, num_views: int) -> Conditions:
    """Conditions of the samples ``index`` (in that order), as ``num_views``-view groups.
    ``extras`` are passed through unchanged (they must not be per-sample)."""
    B = len(cond.camera.K) if cond.camera is not None else None
    out = {}
    for name in ("text", "image", "frame_stride", "drop_text", "drop_image", "drop_camera"):
        value = getattr(cond, name)
        if value is None:
            out[name] = None
        elif isinstance(value, torch.Tensor):
            if B is not None and value.shape[0] != B:
                raise ValueError(f"conditions field {name!r} has batch {value.shape[0]}, cameras have {B}")
            out[name] = value[index.to(value.device)]
        else:
            raise ValueError(f"cannot gather conditions field {name!r} of type {type(value).__name__}")
    camera = None
    if cond.camera is not None:
        cam = cond.camera
        idx = index.to(cam.K.device)
        camera = replace(cam, K=cam.K[idx], c2w=cam.c2w[idx], num_views=num_views,
                         cond_index=None if cam.cond_index is None else cam.cond_index[idx])
    return replace(cond, camera=camera, **out)


def pair_index(pairs: list[tuple[int, int]], num_videos: int, num_groups: int,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Batch index of the interleaved pair layout [a0, b0, a1, b1, ...] over all groups."""
    idx = [g * num_videos + v for g in range(num_groups) for pair in pairs for v in pair]
    return torch.tensor(idx, dtype=torch.long, device=device)


def collaborative_output(model: VideoDiffusionModel, z_t: torch.Tensor, t: torch.Tensor, cond: Conditions,
                         pairs: list[tuple[int, int]], num_videos: int,
                         guidance: Guidance | Mapping | None = None) -> torch.Tensor:
    """Per-video output averaged over the pairs containing it; one (guided) model call."""
    total = z_t.shape[0]
    if total % num_videos:
        raise ValueError(f"batch of {total} latents is not a whole number of {num_videos}-video groups")
    index = pair_index(pairs, num_videos, total // num_videos, z_t.device)
    out = guided_output(model, z_t[index], t[index], gather_views(cond, index, 2), guidance)
    summed = torch.zeros_like(z_t, dtype=torch.float64).index_add_(0, index, out.double())
    counts = torch.zeros(total, dtype=torch.float64, device=z_t.device).index_add_(
        0, index, torch.ones(len(index), dtype=torch.float64, device=z_t.device))
    if (counts == 0).any():
        missing = sorted({int(i) % num_videos for i in torch.nonzero(counts == 0).flatten()})
        raise ValueError(f"videos {missing} belong to no pair")
    return (summed / counts.reshape(-1, *([1] * (z_t.ndim - 1)))).to(z_t.dtype)


@torch.no_grad()
def sample_collaborative(model: VideoDiffusionModel, cond: Conditions, *, num_videos: int,
                         latent_shape: tuple[int, ...], num_steps: int, guidance: Guidance | Mapping | None = None,
                         strategy: str = "partition", num_partitions: int = 1, recurrent_steps: int = 1,
                         generator: torch.Generator | None = None, eta: float = 0.0, spacing: str = "uniform",
                         steps_offset: int = 1, set_alpha_to_one: bool = False,
                         z_T: torch.Tensor | None = None) -> torch.Tensor:
    """Jointly denoise G x M videos; returns latents (G*M, C, T, h, w)."""
    if latent_shape[0] % num_videos:
        raise ValueError(f"latent batch {latent_shape[0]} is not a multiple of num_videos={num_videos}")
    schedule, z_T = start_sampling(model, latent_shape, num_steps, generator, z_T, spacing=spacing,
                                   steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
    guidance = Guidance.from_config(guidance)

    def predict(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pairs = select_pairs(num_videos, strategy, num_partitions, generator)
        return collaborative_output(model, z, t, cond, pairs, num_videos, guidance)

    return ddim_sample(predict, z_T, schedule, parameterization=model.parameterization, eta=eta,
                       generator=generator, recurrent_steps=recurrent_steps)


@torch.no_grad()
def sample_collaborative_video(model: VideoDiffusionModel, batch_or_conditions: dict | Conditions, *,
                               num_videos: int, num_steps: int, latent_shape: tuple[int, ...] | None = None,
                               **kwargs) -> torch.Tensor:
    """Sample and decode M collaborative videos per group: (G*M, T, 3, H, W) in [-1, 1]."""
    cond, shape = prepare_conditions(model, batch_or_conditions, latent_shape)
    z0 = sample_collaborative(model, cond, num_videos=num_videos, latent_shape=shape, num_steps=num_steps,
                              **kwargs)
    return model.decode_latents(z0).clamp(-1, 1)
