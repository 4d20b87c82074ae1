"""One clip, wherever it is stored, and the frame-index / resize logic shared by every data set.

A :class:`Clip` knows its key, caption, frame count and (for RealEstate10K) its camera track,
and decodes only the frames that are asked for. Alignment between frames and pose lines is
checked once, when the clip is opened: a clip whose frame count differs from its pose-line count
is rejected with an error naming both files, never silently paired off by position.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from camvid.data.checks import BadSample, ClipTooShort, check_track
from camvid.data.decode import decode_frames, decode_image
from camvid.data.layout import IMAGE_SUFFIXES, Re10kClip, WebVidClip
from camvid.data.shards import frame_keys, read_video_frames
from camvid.geometry.cameras import (
    CameraTrack,
    parse_pose_lines,
    resize_crop_factors,
    resize_crop_geometry,
)

__all__ = [
    "BadSample",
    "ClipTooShort",
    "check_track",
    "Clip",
    "open_re10k_clip",
    "open_webvid_clip",
    "open_shard_sample",
    "choose_stride",
    "window_indices",
    "fold_indices",
    "resize_crop_video",
    "clip_intrinsics",
]


def _parse_track(lines: list[str], source: str) -> CameraTrack:
    try:
        track = parse_pose_lines(lines, source=source)
    except ValueError as err:
        raise BadSample(str(err), "bad_pose") from None
    return check_track(track, source)


@dataclass
class Clip:
    key: str
    caption: str
    num_frames: int
    track: CameraTrack | None  # None for WebVid clips (no cameras)
    load: Callable[..., np.ndarray | torch.Tensor]  # (indices, out=None) -> (n, H, W, 3) uint8
    source: str  # "re10k" or "webvid"
    where: str  # file or shard member, for error messages

    def frames(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """(n, H, W, 3) uint8 frames; decoded straight into ``out`` when it has their shape (a
        worker's shared-memory batch slot), else into new memory."""
        bad = [int(i) for i in indices if not 0 <= int(i) < self.num_frames]
        if bad:
            raise IndexError(f"{self.where}: frame indices {bad} out of range [0, {self.num_frames})")
        return self.load(list(indices), out)


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        return decode_image(data)
    except Exception as err:  # decoders raise several types for corrupt data
        raise BadSample(f"{where}: cannot decode image ({err})", "corrupt_image") from None


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise BadSample(f"frame file missing: {path}", "frame_count")
    return _decode(path.read_bytes(), str(path))


def _stack(frames: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise BadSample(f"{where}: frames of one clip differ in size: {sorted(shapes)}", "corrupt_image")
    return np.stack(frames)


def open_re10k_clip(clip: Re10kClip) -> Clip:
    """A clip in the RealEstate10K directory layout; checks frames against pose lines."""
    if not clip.pose_path.is_file():
        raise FileNotFoundError(f"pose file not found: {clip.pose_path}")
    track = _parse_track(clip.pose_path.read_text().splitlines(), str(clip.pose_path))
    if not clip.frame_dir.is_dir():
        raise FileNotFoundError(f"frame folder missing for {clip.pose_path}: {clip.frame_dir}")
    files = sorted(p for p in clip.frame_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) != len(track):
        raise BadSample(
            f"{clip.frame_dir}: {len(files)} frame files but {len(track)} pose lines in {clip.pose_path}; "
            "refusing to pair frames and poses by position", "frame_count"
        )

    def load(indices: Sequence[int], out=None) -> np.ndarray:
        return _stack([_read_image(files[i]) for i in indices], str(clip.frame_dir))

    return Clip(clip.clip_id, clip.caption, len(track), track, load, "re10k", str(clip.pose_path))


def open_webvid_clip(clip: WebVidClip) -> Clip:
    """A WebVid clip (mp4 decoded up front; frame folders decoded lazily)."""
    path = clip.path
    if path.suffix.lower() == ".mp4":
        frames = read_video_frames(path)
        if not frames:
            raise ValueError(f"{path}: video has no frames")

        def load(indices: Sequence[int], out=None) -> np.ndarray:
            return _stack([frames[i] for i in indices], str(path))

        return Clip(clip.videoid, clip.caption, len(frames), None, load, "webvid", str(path))
    if not path.is_dir():
        raise FileNotFoundError(f"WebVid video {clip.videoid!r}: neither {path}.mp4 nor frame folder {path} exists")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no frames (png/jpg) in {path}")

    def load_files(indices: Sequence[int], out=None) -> np.ndarray:
        return _stack([_read_image(files[i]) for i in indices], str(path))

    return Clip(clip.videoid, clip.caption, len(files), None, load_files, "webvid", str(path))


SOURCES = ("re10k", "webvid")


def _metadata(sample: dict, where: str) -> dict:
    if "json" not in sample:
        raise BadSample(f"{where}: sample has no json metadata (cut short, or not written by camvid)", "metadata")
    try:
        meta = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError) as err:
        raise BadSample(f"{where}: json metadata does not parse ({err})", "metadata") from None
    if not isinstance(meta, dict) or meta.get("source") not in SOURCES or not isinstance(meta.get("num_frames"), int):
        raise BadSample(f"{where}: json metadata must hold source in {SOURCES} and an integer num_frames, "
                        f"got {meta!r}", "metadata")
    return meta


def open_shard_sample(sample: dict) -> Clip:
    """A raw WebDataset sample (field -> bytes) written by :mod:`camvid.data.shards`, checked
    against its own json before use: the source kind (a RealEstate10K sample must carry its
    ``pose.txt``, never falling back to identity cameras), the frame count (contiguous frames
    ``00000..``, as many as the json says) and one pose row per frame."""
    key = sample.get("__key__", "<no key>")
    where = f"{sample.get('__url__', '<shard>')}:{key}"
    meta = _metadata(sample, where)
    keys = frame_keys(sample)
    expected = [f"{t:05d}" for t in range(meta["num_frames"])]
    if [k.split(".")[0] for k in keys] != expected:
        raise BadSample(
            f"{where}: json says {meta['num_frames']} frames but the sample holds {len(keys)} frame fields "
            "(a frame is missing, or the sample was cut short)", "frame_count")
    if "txt" not in sample:
        raise BadSample(f"{where}: sample has no caption field (.txt); it was cut short", "metadata")
    caption = sample["txt"].decode()
    track = None
    if meta["source"] == "re10k":
        if "pose.txt" not in sample:
            raise BadSample(f"{where}: RealEstate10K sample without pose.txt; refusing to train it with made-up "
                            "cameras", "no_cameras")
        track = _parse_track(sample["pose.txt"].decode().splitlines(), f"{where}.pose.txt")
        if len(track) != len(keys):
            raise BadSample(
                f"{where}: {len(keys)} frames but {len(track)} pose lines; refusing to pair them by position",
                "frame_count")
    elif "pose.txt" in sample:
        raise BadSample(f"{where}: json says source=webvid but the sample carries pose.txt", "metadata")

    def load(indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        try:
            return decode_frames([(sample[keys[i]], f"{where}.{keys[i]}") for i in indices], out)
        except ValueError as err:
            raise BadSample(str(err), "corrupt_image") from None

    return Clip(key, caption, len(keys), track, load, meta["source"], where)


# --------------------------------------------------------------------------------------------
# frame windows


def choose_stride(
    num_available: int, span_frames: int, stride_min: int, stride_max: int, rng: np.random.Generator | None,
    where: str = "clip",
) -> int:
    """Stride for ``span_frames`` frames taken every ``stride`` frames out of ``num_available``.

    Drawn uniformly from ``[stride_min, stride_max]`` (``rng=None``: ``stride_max``), then clamped
    down so the window fits the clip. Raises :class:`ClipTooShort` when even stride 1 does not fit.
    """
    if not 1 <= stride_min <= stride_max:
        raise ValueError(f"frame stride range must satisfy 1 <= stride_min <= stride_max, got [{stride_min}, {stride_max}]")
    if num_available < span_frames:
        raise ClipTooShort(f"{where}: has {num_available} frames, needs at least {span_frames}")
    stride = stride_max if rng is None else int(rng.integers(stride_min, stride_max + 1))
    if span_frames > 1:
        stride = min(stride, (num_available - 1) // (span_frames - 1))
    return max(stride, 1)


def window_indices(
    num_available: int, num_frames: int, stride: int, rng: np.random.Generator | None
) -> np.ndarray:
    """``num_frames`` indices ``start + stride * k``; random start (``rng=None``: start 0)."""
    last_start = num_available - 1 - (num_frames - 1) * stride
    start = 0 if rng is None else int(rng.integers(0, last_start + 1))
    return start + stride * np.arange(num_frames)


def fold_indices(
    num_available: int, num_frames: int, stride: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """CVD folding: a ``2T-1``-frame window cut at its middle frame ``m``; video A runs forward
    ``m, m+s, ...`` and video B backward ``m, m-s, ...``, so both start on the same frame.
    ``rng=None`` centres the window in the clip."""
    reach = (num_frames - 1) * stride
    lo, hi = reach, num_available - 1 - reach
    if hi < lo:
        raise ClipTooShort(f"fold needs {2 * reach + 1} frames at stride {stride}, clip has {num_available}")
    middle = (lo + hi) // 2 if rng is None else int(rng.integers(lo, hi + 1))
    steps = stride * np.arange(num_frames)
    return middle + steps, middle - steps


# --------------------------------------------------------------------------------------------
# resize + crop


def resize_crop_video(frames: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, h, w) **uint8**, short-side resize + centre crop.

    Workers ship uint8 (4x less than float32 through the worker queues) in a channel-last memory
    layout (a permuted view of the decoded frames); the training loop
    normalises to [-1, 1] on the device (:func:`camvid.data.batches.normalize_video`). Same
    geometry as :func:`camvid.geometry.cameras.resize_crop_geometry`; frames already at the output
    size pass through untouched (bit-exact round trips).
    """
    src_hw = tuple(frames.shape[1:3])
    video = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    video = video.permute(0, 3, 1, 2)
    if tuple(src_hw) != tuple(out_hw):
        s, top, left = resize_crop_geometry(src_hw, out_hw)
        new_h = max(out_hw[0], round(src_hw[0] * s))
        new_w = max(out_hw[1], round(src_hw[1] * s))
        if (new_h, new_w) != tuple(src_hw):
            video = F.interpolate(video.float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                                  antialias=s < 1).round_().clamp_(0, 255).to(torch.uint8)
        video = video[:, :, top : top + out_hw[0], left : left + out_hw[1]]
    # A strided view, not a copy: making (T, H, W, 3) frames channel-first costs more than decoding a
    # frame; collate keeps the strides and the copy to contiguous happens on the device (to_device).
    return video


def clip_intrinsics(track: CameraTrack, indices: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Pixel K (T, 3, 3) float64 at ``out_hw`` for the selected frames of a clip whose frames are
    ``src_hw`` (:func:`~camvid.geometry.cameras.normalized_to_pixel_intrinsics`, then
    :func:`~camvid.geometry.cameras.resize_crop_intrinsics`, in numpy)."""
    fx, fy, cx, cy = track.intrinsics[indices].T
    sx, sy, top, left = resize_crop_factors(src_hw, out_hw)
    src_h, src_w = src_hw
    K = np.zeros((len(fx), 3, 3))
    K[:, 0, 0] = fx * src_w * sx
    K[:, 0, 2] = cx * src_w * sx - left
    K[:, 1, 1] = fy * src_h * sy
    K[:, 1, 2] = cy * src_h * sy - top
    K[:, 2, 2] = 1.0
    return K
