"""Turn one clip into a training sample (single video, CVD fold pair or homography pair) and
collate samples into the batch layout of :mod:`camvid.models.base`.

Per-sample layout (``V`` = number of views: no view dim for single videos, 2 for pairs)::

    video         ([V,] T, 3, H, W) uint8 (streams; normalised to [-1, 1] on the device by
                  camvid.data.batches.to_device; map-style data sets return float32 [-1, 1])
    K             ([V,] T, 3, 3)   float32 pixel intrinsics at (H, W)
    c2w           ([V,] T, 4, 4)   float32, relative to the conditioning frame
    cond_index    ([V,])           long
    frame_stride  ([V,])           long, the stride actually used (after clamping)
    frame_indices ([V,] T)         long, frames taken from the source clip
    caption, key  str (pairs: list of V str, keys suffixed ":a" / ":b")
    num_views     int
    homography    (V, T, 3, 3)     float32, homography pairs only: x_b ~ H[t] x_a (identity for view a)
    camera_free   (V,)             bool, homography pairs only (all True): no camera input (CVD's WebVid phase)

:func:`collate` stacks samples and flattens the view dim, giving ``[a0, b0, a1, b1, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from camvid.data.clips import (
    Clip,
    choose_stride,
    clip_intrinsics,
    fold_indices,
    resize_crop_video,
    window_indices,
)
from camvid.data.synthetic import default_intrinsics
from camvid.geometry.cameras import invert_rigid_np

__all__ = ["SampleSpec", "PAIRINGS", "single_sample", "fold_pair", "homography_pair", "make_sample", "collate",
           "num_views"]

PAIRINGS = ("none", "re10k_fold", "webvid_homography")


@dataclass(frozen=True)
class SampleSpec:
    """How to cut a sample out of a clip. ``train=False`` gives the evaluation protocol: stride
    ``stride_max`` (clamped to fit), first window / centred fold, conditioning frame 0."""

    num_frames: int = 16
    height: int = 256
    width: int = 256
    stride_min: int = 1
    stride_max: int = 10
    train: bool = True
    random_cond: bool = True
    homography_strength: float = 1.0
    webvid_fov_deg: float = 60.0  # WebVid has no cameras; K is a nominal pinhole for Plücker inputs

    def __post_init__(self):
        if self.num_frames < 1 or self.height < 1 or self.width < 1:
            raise ValueError(
                f"num_frames, height and width must be >= 1, got {self.num_frames}, {self.height}, {self.width}"
            )
        if not 1 <= self.stride_min <= self.stride_max:
            raise ValueError(
                f"frame stride range must satisfy 1 <= stride_min <= stride_max, got [{self.stride_min}, {self.stride_max}]"
            )

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.height, self.width


def _cameras(clip: Clip, indices: np.ndarray, src_hw, spec: SampleSpec) -> tuple[np.ndarray, np.ndarray]:
    """Absolute pixel K (T, 3, 3) and c2w (T, 4, 4) in float64; WebVid clips get identity cameras."""
    T = len(indices)
    if clip.track is None:
        K = default_intrinsics(spec.height, spec.width, spec.webvid_fov_deg)
        return np.broadcast_to(K, (T, 3, 3)), np.broadcast_to(np.eye(4), (T, 4, 4))
    return clip_intrinsics(clip.track, indices, src_hw, spec.out_hw), clip.track.subset(indices).c2w()


def _view(clip: Clip, indices: np.ndarray, stride: int, cond: int, spec: SampleSpec,
          out: torch.Tensor | None = None) -> dict:
    frames = clip.frames(indices, None if out is None else out.numpy())
    K, c2w = _cameras(clip, indices, frames.shape[1:3], spec)
    rel = invert_rigid_np(c2w[cond]) @ c2w  # relative_poses, in numpy
    return {
        "video": resize_crop_video(frames, spec.out_hw),
        "K": torch.from_numpy(K.astype(np.float32)),
        "c2w": torch.from_numpy(rel.astype(np.float32)),
        "cond_index": torch.tensor(cond, dtype=torch.long),
        "frame_stride": torch.tensor(stride, dtype=torch.long),
        "frame_indices": torch.from_numpy(np.asarray(indices, dtype=np.int64)),
    }


def single_sample(clip: Clip, spec: SampleSpec, rng: np.random.Generator, out: torch.Tensor | None = None) -> dict:
    """One video of ``num_frames`` frames; poses relative to a random (eval: first) frame.
    ``out``: see :func:`make_sample`."""
    stride = choose_stride(clip.num_frames, spec.num_frames, spec.stride_min, spec.stride_max,
                           rng if spec.train else None, clip.where)
    indices = window_indices(clip.num_frames, spec.num_frames, stride, rng if spec.train else None)
    cond = int(rng.integers(spec.num_frames)) if spec.train and spec.random_cond else 0
    view = _view(clip, indices, stride, cond, spec, None if out is None else out[0])
    return {**view, "caption": clip.caption, "key": clip.key, "num_views": 1}


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _place(videos: list[torch.Tensor], out: torch.Tensor | None) -> torch.Tensor:
    """(V, T, 3, H, W) from V videos (T, 3, H, W): a view of ``out`` (V, T, H, W, 3) holding them
    (copying only those not decoded there already), or a new stack."""
    if out is None:
        return torch.stack(videos)
    for k, video in enumerate(videos):
        if not _same_memory(video.movedim(-3, -1), out[k]):
            out[k].copy_(video.movedim(-3, -1))
    return out.movedim(-1, -3)


def _pair(views: list[dict], clip: Clip, out: torch.Tensor | None = None) -> dict:
    pair = {name: torch.stack([v[name] for v in views]) for name in views[0] if name != "video"}
    pair["video"] = _place([v["video"] for v in views], out)
    pair.update(caption=[clip.caption] * 2, key=[f"{clip.key}:a", f"{clip.key}:b"], num_views=2)
    return pair


def fold_pair(clip: Clip, spec: SampleSpec, rng: np.random.Generator, out: torch.Tensor | None = None) -> dict:
    """CVD fold pair from one RealEstate10K clip: both videos start on the shared middle frame and
    their poses are relative to it (conditioning index 0 for both). ``out``: see :func:`make_sample`."""
    if clip.track is None:
        raise ValueError(f"{clip.where}: re10k_fold pairing needs camera poses, this clip has none")
    stride = choose_stride(clip.num_frames, 2 * spec.num_frames - 1, spec.stride_min, spec.stride_max,
                           rng if spec.train else None, f"{clip.where} (re10k_fold pair)")
    fwd, bwd = fold_indices(clip.num_frames, spec.num_frames, stride, rng if spec.train else None)
    views = [_view(clip, idx, stride, 0, spec, None if out is None else out[k]) for k, idx in enumerate((fwd, bwd))]
    return _pair(views, clip, out)


def homography_pair(clip: Clip, spec: SampleSpec, rng: np.random.Generator,
                    out: torch.Tensor | None = None) -> dict:
    """CVD WebVid pair: the clip and a copy warped by per-frame homographies that grow from the
    identity at frame 0 (``homography`` maps view a's pixels to view b's). Cameras are identity.
    ``out``: see :func:`make_sample`."""
    from camvid.geometry.homography import random_homography_sequence, warp_images

    single = single_sample(clip, SampleSpec(**{**spec.__dict__, "random_cond": False}), rng,
                           None if out is None else out[:1])
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    H = random_homography_sequence(gen, spec.homography_strength, spec.out_hw, spec.num_frames)
    # Warp in [0, 1] so pixels pulled from outside the frame come out black, as in the paper's figures.
    warped = warp_images(single["video"].float() / 255, H.float()).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    view_a = {k: single[k] for k in ("video", "K", "c2w", "cond_index", "frame_stride", "frame_indices")}
    view_b = {**view_a, "video": warped}
    if clip.track is not None:  # a RealEstate10K clip used as WebVid-style content: drop its cameras
        eye = torch.eye(4).expand_as(view_a["c2w"]).clone()
        view_a["c2w"], view_b["c2w"] = eye, eye
    pair = _pair([view_a, view_b], clip, out)
    pair["homography"] = torch.stack([torch.eye(3, dtype=torch.float64).expand_as(H), H]).float()
    # WebVid has no cameras: CVD trains this phase without camera input (models skip the camera encoder)
    pair["camera_free"] = torch.ones(2, dtype=torch.bool)
    return pair


def make_sample(clip: Clip, spec: SampleSpec, rng: np.random.Generator, pairing: str = "none",
                out: torch.Tensor | None = None) -> dict:
    """One sample of ``pairing``. ``out``: uint8 ``(V, T, H, W, 3)`` (``V`` = views of the
    pairing) where the video should go, e.g. the sample's place in a DataLoader worker's
    shared-memory batch slot; frames of the output size are decoded straight into it (others are
    resized, then copied by :func:`collate`)."""
    if pairing == "none":
        return single_sample(clip, spec, rng, out)
    if pairing == "re10k_fold":
        return fold_pair(clip, spec, rng, out)
    if pairing == "webvid_homography":
        return homography_pair(clip, spec, rng, out)
    raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")


def num_views(pairing: str) -> int:
    return 1 if pairing == "none" else 2


_STRING_FIELDS = ("caption", "key")


def _stack_video(values: list[torch.Tensor], views: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Stack ``video`` in its channel-last memory layout (a plain copy, not a transposing one).

    ``out``: a channel-last ``(B', V, T, H, W, 3)`` buffer (B' >= B; a worker's shared-memory
    slot) that samples were decoded into: only videos not already in their place are copied.
    Without it one clip of one view is returned without copying."""
    if out is not None:
        target = out[: len(values)]
        for i, video in enumerate(values):
            _place([video] if views == 1 else list(video.unbind(0)), target[i])
        return target.flatten(0, 1).movedim(-1, -3)
    hwc = [v.movedim(-3, -1) for v in values]  # (..., H, W, 3): contiguous for decoded frames
    if len(hwc) == 1 and views == 1:
        return values[0].unsqueeze(0)
    stacked = torch.stack(hwc).movedim(-1, -3)
    return stacked.flatten(0, 1) if views > 1 else stacked


def collate(samples: list[dict], video_out: torch.Tensor | None = None) -> dict:
    """Stack samples into the batch layout of :mod:`camvid.models.base`; pairs are interleaved
    ``[a0, b0, a1, b1, ...]``. ``video_out``: see :func:`_stack_video`."""
    if not samples:
        raise ValueError("collate: empty list of samples")
    views = samples[0]["num_views"]
    names = set(samples[0])
    for s in samples[1:]:
        if s["num_views"] != views or set(s) != names:
            raise ValueError(
                f"collate: samples disagree (num_views {views} vs {s['num_views']}, fields "
                f"{sorted(names ^ set(s))}); a batch must hold one pairing"
            )
    batch: dict = {"num_views": views}
    for name in sorted(names - {"num_views"}):
        values = [s[name] for s in samples]
        if name in _STRING_FIELDS:
            batch[name] = [v for vs in values for v in vs] if views > 1 else list(values)
        elif name == "video":
            batch[name] = _stack_video(values, views, video_out)
        else:
            stacked = torch.stack(values)
            batch[name] = stacked.flatten(0, 1) if views > 1 else stacked
    return batch
