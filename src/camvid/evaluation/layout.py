"""The on-disk layout of generated samples, written by ``src/sample.py`` and read by the evaluator.

::

    <root>/
      index.json              {"format": "camvid-samples", "version": 1, "samples": [ids...]}
      <sample_id>/
        video.mp4             the generated video, uint8 RGB, H.264
        gt.mp4                the ground-truth video of the same cameras, when there is one
        cameras.txt           RealEstate10K pose file: URL line = sample id, then one line per frame,
                              intrinsics normalised by the video width / height, world-to-camera
        meta.json             caption, seed, height, width, num_frames, fps, method, config,
                              group and view (CVD multi-video sets), plus free-form extras

Readers scan the sample folders (those holding a ``meta.json``), so several ranks may write into
one root; ``index.json`` is a convenience listing rewritten atomically after each sample.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camvid.fsutil import atomic_write_text
from camvid.geometry.cameras import (
    CameraTrack,
    invert_rigid,
    normalized_to_pixel_intrinsics,
    pixel_to_normalized_intrinsics,
    read_pose_file,
    validate_cameras,
    write_pose_file,
)

__all__ = [
    "LAYOUT_FORMAT",
    "LAYOUT_VERSION",
    "SampleRecord",
    "write_video",
    "read_video",
    "write_sample",
    "read_samples",
    "video_problem",
    "screen_videos",
]

LAYOUT_FORMAT = "camvid-samples"
LAYOUT_VERSION = 1
VIDEO_FILE = "video.mp4"
GT_VIDEO_FILE = "gt.mp4"
CAMERAS_FILE = "cameras.txt"
META_FILE = "meta.json"
INDEX_FILE = "index.json"
_SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Near-lossless H.264: generated mp4s are what the papers score, and CRF 12 keeps the codec's
# effect on SIFT far below the differences between methods.
_CRF = 12


@dataclass
class SampleRecord:
    """One sample folder, its cameras in pixels at the video resolution."""

    sample_id: str
    path: Path
    K: np.ndarray  # (T, 3, 3) pixel intrinsics
    c2w: np.ndarray  # (T, 4, 4) camera-to-world, OpenCV axes
    caption: str
    seed: int
    height: int
    width: int
    fps: float
    meta: dict[str, Any] = field(default_factory=dict)
    gt_problem: str | None = None  # set by screen_videos: gt.mp4 exists but cannot be used

    @property
    def video_path(self) -> Path:
        return self.path / VIDEO_FILE

    @property
    def gt_video_path(self) -> Path | None:
        gt = self.path / GT_VIDEO_FILE
        return gt if gt.is_file() and self.gt_problem is None else None

    @property
    def group(self) -> str | None:
        return self.meta.get("group")

    @property
    def view(self) -> int:
        return int(self.meta.get("view", 0))

    @property
    def num_frames(self) -> int:
        return len(self.c2w)

    def load_video(self) -> np.ndarray:
        return read_video(self.video_path)

    def load_gt_video(self) -> np.ndarray | None:
        return None if self.gt_video_path is None else read_video(self.gt_video_path)


def _check_video(video: np.ndarray, what: str) -> np.ndarray:
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 (T, H, W, 3), got {video.dtype} {tuple(video.shape)}")
    if video.shape[1] % 2 or video.shape[2] % 2:
        raise ValueError(f"{what}: H.264 (yuv420p) needs even height and width, got {video.shape[1:3]}")
    return video


def write_video(path: str | Path, video: np.ndarray, fps: float = 8.0) -> None:
    """uint8 (T, H, W, 3) -> H.264 mp4 at exactly the given size (no macro-block padding)."""
    import imageio.v2 as imageio

    video = _check_video(video, str(path))
    writer = imageio.get_writer(
        str(path), fps=fps, codec="libx264", macro_block_size=1, pixelformat="yuv420p",
        output_params=["-crf", str(_CRF)], ffmpeg_log_level="error",
    )
    try:
        for frame in video:
            writer.append_data(frame)
    finally:
        writer.close()


def video_problem(path: Path, num_frames: int, hw: tuple[int, int]) -> str | None:
    """Why the video at ``path`` cannot be scored against ``num_frames`` cameras at ``hw``, or None.

    Decodes the whole file: a header can look fine and the stream still be cut short.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path.name}: missing"
    if path.stat().st_size == 0:
        return f"{path.name}: empty file (0 bytes)"
    try:
        video = read_video(path)
    except Exception as err:  # ffmpeg's reasons vary by container and codec; keep the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{path.name}: unreadable ({type(err).__name__}: {first[:200]})"
    T, H, W = video.shape[:3]
    if T < 2:
        return f"{path.name}: {T} frame; every metric needs at least 2"
    if T != num_frames:
        return f"{path.name}: {T} frames but {num_frames} camera poses in {CAMERAS_FILE}"
    if (H, W) != tuple(hw):
        return f"{path.name}: {H}x{W} frames but {META_FILE} says {hw[0]}x{hw[1]}"
    return None


def screen_videos(records: list[SampleRecord]) -> dict[str, str]:
    """Check every sample's video and gt.mp4; ``{sample_id: reason}`` of unusable generated videos.
    An unusable gt.mp4 is set aside on its record (``gt_problem``): the sample then counts as one
    without a GT video (no reference numbers, not in the FVD / FID real set)."""
    failed = {}
    for r in records:
        hw = (r.height, r.width)
        problem = video_problem(r.video_path, r.num_frames, hw)
        if problem:
            failed[r.sample_id] = problem
        gt = r.path / GT_VIDEO_FILE
        if gt.is_file():
            r.gt_problem = video_problem(gt, r.num_frames, hw)
    return failed


def read_video(path: str | Path) -> np.ndarray:
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        frames = [np.asarray(f)[..., :3] for f in reader]
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"{path}: video has no frames")
    return np.stack(frames).astype(np.uint8)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value).tolist()
    return value


def write_sample(
    out_dir: str | Path,
    sample_id: str,
    video: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    caption: str,
    seed: int,
    gt_video: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    fps: float = 8.0,
) -> Path:
    """Write one sample folder (see the module docstring) and return its path.

    ``video``: uint8 (T, H, W, 3); ``K``: (T, 3, 3) or (3, 3) pixel intrinsics at the video
    resolution; ``c2w``: (T, 4, 4) camera-to-world. ``meta`` may carry ``method``, ``config``,
    ``group`` / ``view`` (CVD multi-video sets) and anything else JSON-serialisable.
    """
    if not _SAMPLE_ID.match(sample_id):
        raise ValueError(f"sample_id {sample_id!r}: use letters, digits, '_', '-', '.' (no leading dot)")
    video = _check_video(video, f"sample {sample_id}: video")
    T, H, W = video.shape[:3]
    K_t = torch.from_numpy(np.array(K, dtype=np.float64))
    if K_t.ndim == 2:
        K_t = K_t.expand(T, 3, 3)
    c2w_t = torch.from_numpy(np.array(c2w, dtype=np.float64))
    if c2w_t.ndim != 3 or len(c2w_t) != T:
        raise ValueError(f"sample {sample_id}: {tuple(c2w_t.shape)} camera poses for a video of {T} frames")
    validate_cameras(K_t, c2w_t, what=f"sample {sample_id}")
    if gt_video is not None:
        gt_video = _check_video(gt_video, f"sample {sample_id}: gt_video")
        if gt_video.shape != video.shape:
            raise ValueError(
                f"sample {sample_id}: gt_video {gt_video.shape} and video {video.shape} differ in shape"
            )
    meta = dict(meta or {})
    for reserved in ("sample_id", "caption", "seed", "height", "width", "num_frames", "fps"):
        meta.pop(reserved, None)

    root = Path(out_dir)
    sample_dir = root / sample_id
    sample_dir.mkdir(parents=True, exist_ok=True)
    write_video(sample_dir / VIDEO_FILE, video, fps)
    if gt_video is not None:
        write_video(sample_dir / GT_VIDEO_FILE, gt_video, fps)
    track = CameraTrack(
        url=sample_id,
        timestamps=np.round(np.arange(T) * 1e6 / fps).astype(np.int64),
        intrinsics=pixel_to_normalized_intrinsics(K_t, W, H).numpy(),
        w2c=invert_rigid(c2w_t)[:, :3, :].numpy(),
    )
    write_pose_file(sample_dir / CAMERAS_FILE, track)
    record = {
        "sample_id": sample_id, "caption": str(caption), "seed": int(seed),
        "height": H, "width": W, "num_frames": T, "fps": float(fps), **_json_ready(meta),
    }
    atomic_write_text(sample_dir / META_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    _update_index(root)
    return sample_dir


def _sample_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / META_FILE).is_file())


def _update_index(root: Path) -> None:
    index = {"format": LAYOUT_FORMAT, "version": LAYOUT_VERSION, "samples": [p.name for p in _sample_dirs(root)]}
    atomic_write_text(root / INDEX_FILE, json.dumps(index, indent=2) + "\n")


def _read_record(sample_dir: Path) -> SampleRecord:
    meta_path = sample_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: invalid JSON: {err}") from None
    missing = [k for k in ("caption", "seed", "height", "width") if k not in meta]
    if missing:
        raise ValueError(f"{meta_path}: missing keys {missing}")
    if not (sample_dir / VIDEO_FILE).is_file():
        raise FileNotFoundError(f"{sample_dir}: no {VIDEO_FILE}")
    track = read_pose_file(sample_dir / CAMERAS_FILE)
    H, W = int(meta["height"]), int(meta["width"])
    K = normalized_to_pixel_intrinsics(torch.from_numpy(track.intrinsics), W, H).numpy()
    extras = {k: v for k, v in meta.items() if k not in ("sample_id", "caption", "seed", "height", "width", "fps")}
    return SampleRecord(
        sample_id=sample_dir.name, path=sample_dir, K=K, c2w=track.c2w(), caption=str(meta["caption"]),
        seed=int(meta["seed"]), height=H, width=W, fps=float(meta.get("fps", 8.0)), meta=extras,
    )


def read_samples(root: str | Path) -> list[SampleRecord]:
    """Every sample folder under ``root``, sorted by id; a malformed folder raises naming its file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"samples folder not found: {root}")
    index = root / INDEX_FILE
    if index.is_file():
        info = json.loads(index.read_text())
        if info.get("format") != LAYOUT_FORMAT:
            raise ValueError(f"{index}: format {info.get('format')!r}, expected {LAYOUT_FORMAT!r}")
        if int(info.get("version", 0)) > LAYOUT_VERSION:
            raise ValueError(f"{index}: layout version {info['version']} is newer than this reader")
    records = [_read_record(d) for d in _sample_dirs(root)]
    if not records:
        raise ValueError(f"{root}: no sample folders (folders holding {META_FILE})")
    return records
