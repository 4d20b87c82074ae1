"""Camera paths for sampling: presets, pose files of any layout, or the path of another video,
transferred to a new image.

Transfer (``transfer_track``) takes one clip's cameras and makes them a path for another image:

- poses relative to the first frame (the conditioning frame of sampling is frame 0);
- translations optionally rescaled so that the camera furthest from the first one sits at
  ``translation_scale`` (the evaluation's normalisation, with a chosen distance instead of 1);
- intrinsics adapted to the target image's aspect ratio with square pixels kept: the source
  frame's size follows from its normalised intrinsics (square pixels: ``fx * W = fy * H``), and the
  source camera is resized and centre-cropped to the target aspect exactly like the frames of a
  clip are (``camvid.geometry.cameras.resize_crop_geometry``, without rounding), so the focal
  length in pixels is the same along both axes of the target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from camvid.geometry.cameras import CameraTrack
from camvid.geometry.conventions import Cameras, c2w_to_w2c, read_cameras, w2c_to_c2w, write_re10k

__all__ = [
    "VIDEO_SUFFIXES",
    "is_video_source",
    "source_aspect",
    "adapt_intrinsics",
    "rescale_translation",
    "transfer_track",
    "image_size",
    "load_track",
    "prepare_trajectory",
    "preset_track",
    "resolve_trajectories",
    "save_path_picture",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif")


def is_video_source(spec: str | Path) -> bool:
    """A video file, or a folder of frames (images, no cameras.txt / images.txt)."""
    path = Path(spec)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if path.is_dir() and not (path / "images.txt").is_file():
        return any(p.suffix.lower() in (".png", ".jpg", ".jpeg") for p in path.iterdir())
    return False


def source_aspect(intrinsics) -> np.ndarray:
    """Width / height of the frames a normalised (..., 4) fx, fy, cx, cy belongs to, assuming square pixels."""
    k = np.asarray(intrinsics, dtype=np.float64)
    return k[..., 1] / k[..., 0]


def adapt_intrinsics(intrinsics, target_hw: tuple[int, int], source_hw: tuple[int, int] | None = None) -> np.ndarray:
    """(T, 4) normalised intrinsics of the source frames -> normalised intrinsics for a target image
    of ``target_hw = (height, width)``, by an exact short-side resize and centre crop of the source
    camera. Pixels are square in the target (``fx' * W = fy' * H``) by construction. ``source_hw``
    (``pose_source_hw=[H,W]``) gives the source frame's size when its pixels are not square."""
    k = np.asarray(intrinsics, dtype=np.float64)
    Ht, Wt = (float(v) for v in target_hw)
    if Ht <= 0 or Wt <= 0:
        raise ValueError(f"target size must be positive, got {target_hw}")
    # source frame in units of its height: (W_s, H_s) = (aspect, 1)
    aspect = source_aspect(k) if source_hw is None else np.full(k.shape[:-1], source_hw[1] / source_hw[0])
    f = k[..., 1]  # focal length in source heights (= fx * W_s with square pixels)
    s = np.maximum(Ht, Wt / aspect)  # scale so the source covers the target
    left = (aspect * s - Wt) / 2
    top = (s - Ht) / 2
    f_t = f * s
    cx_t = k[..., 2] * aspect * s - left
    cy_t = k[..., 3] * s - top
    return np.stack([f_t / Wt, f_t / Ht, cx_t / Wt, cy_t / Ht], axis=-1)


def rescale_translation(c2w, scale: float | None) -> np.ndarray:
    """Relative c2w poses (first frame = identity) with the furthest camera at distance ``scale``."""
    c2w = np.array(c2w, dtype=np.float64)
    if scale is None:
        return c2w
    if not scale >= 0:
        raise ValueError(f"translation scale must be >= 0, got {scale}")
    furthest = np.linalg.norm(c2w[:, :3, 3] - c2w[:1, :3, 3], axis=-1).max()
    if furthest < 1e-12:
        return c2w  # a rotation in place: nothing to scale
    c2w[:, :3, 3] = c2w[:1, :3, 3] + (c2w[:, :3, 3] - c2w[:1, :3, 3]) * (scale / furthest)
    return c2w


def transfer_track(track: CameraTrack, target_hw: tuple[int, int], translation_scale: float | None = None,
                   num_frames: int | None = None, source_hw: tuple[int, int] | None = None) -> CameraTrack:
    """The path of ``track`` for a new image of ``target_hw`` (height, width): see the module doc."""
    if num_frames is not None:
        if num_frames < 1 or num_frames > len(track):
            raise ValueError(f"frames={num_frames}: the path has {len(track)} cameras")
        track = track.subset(range(num_frames))
    c2w = w2c_to_c2w(track.w2c)
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    rel = rescale_translation(rel, translation_scale)
    header = f"camvid transfer of {track.url or 'a camera path'} to {target_hw[1]}x{target_hw[0]}"
    if translation_scale is not None:
        header += f" scale={translation_scale:g}"
    return CameraTrack(header, track.timestamps.copy(), adapt_intrinsics(track.intrinsics, target_hw, source_hw),
                       c2w_to_w2c(rel)[:, :3, :])


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as img:
        return img.width, img.height


def preset_track(name: str, num_frames: int, hw: tuple[int, int], fov_deg: float = 60.0, seed: int = 0) -> CameraTrack:
    """A named preset of :mod:`camvid.data.synthetic` as a pose track for an image of ``hw``."""
    from camvid.data.synthetic import TRAJECTORY_KINDS, default_intrinsics, make_trajectory

    if name not in TRAJECTORY_KINDS:
        raise ValueError(f"trajectory={name!r}: not a preset ({', '.join(TRAJECTORY_KINDS)})")
    c2w = make_trajectory(name, num_frames, seed)
    K = default_intrinsics(hw[0], hw[1], fov_deg)
    intr = np.array([K[0, 0] / hw[1], K[1, 1] / hw[0], K[0, 2] / hw[1], K[1, 2] / hw[0]])
    return CameraTrack(f"camvid preset {name} seed={seed}", np.arange(num_frames, dtype=np.int64) * 100_000,
                       np.tile(intr, (num_frames, 1)), c2w_to_w2c(c2w)[:, :3, :])


def load_track(spec: str | Path, *, annotate_options=None) -> CameraTrack:
    """Cameras of ``spec``: a pose file of any layout (docs/conventions.md), or a video / frame
    folder annotated by structure-from-motion (``camvid.evaluation.annotate``)."""
    if is_video_source(spec):
        from camvid.evaluation.annotate import AnnotateOptions, annotate_video

        result = annotate_video(spec, annotate_options or AnnotateOptions())
        return result.track
    return read_cameras(spec).track


def prepare_trajectory(spec: str, out_path: str | Path, target_hw: tuple[int, int],
                       translation_scale: float | None = None, num_frames: int | None = None,
                       annotate_options=None) -> Path:
    """Transfer the path of ``spec`` (pose file or video) to a target of ``target_hw`` and write it
    as a standard RealEstate10K file at ``out_path``; returns that path."""
    track = transfer_track(load_track(spec, annotate_options=annotate_options), target_hw, translation_scale,
                           num_frames)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_re10k(out_path, Cameras(track, target_hw[1], target_hw[0]))
    return out_path


def resolve_trajectories(specs: list[str], out_dir: str | Path, num_frames: int, target_hw: tuple[int, int], *,
                         translation_scale: float | None = None, stride: int = 1, fov_deg: float = 60.0,
                         seed: int = 0, source_hw: tuple[int, int] | None = None) -> list[str]:
    """What ``src/sample.py`` passes on for each requested trajectory.

    A preset without a translation scale stays a preset name. Anything else -- a pose file of any
    layout, a video (annotated by SfM at ``stride``, first ``num_frames`` frames), or a preset with a
    scale -- is transferred to the target image (``target_hw``: the conditioning image's original
    size) and written as ``out_dir/trajectories/view<i>.txt``, whose path is returned instead.
    ``source_hw`` is the size of the video a pose file was recorded on (default: from square pixels)."""
    from camvid.data.synthetic import TRAJECTORY_KINDS

    resolved = []
    for i, spec in enumerate(specs):
        spec = str(spec)
        if spec in TRAJECTORY_KINDS and translation_scale is None:
            resolved.append(spec)
            continue
        out = Path(out_dir) / "trajectories" / f"view{i}.txt"
        if spec in TRAJECTORY_KINDS:
            track = preset_track(spec, num_frames, target_hw, fov_deg, seed + i)
        elif is_video_source(spec):
            from camvid.evaluation.annotate import AnnotateOptions

            track = load_track(spec, annotate_options=AnnotateOptions(stride=stride, max_frames=num_frames))
        elif Path(spec).exists():
            track = load_track(spec)
        else:
            raise ValueError(f"trajectory={spec!r}: not a pose file and not a preset ({', '.join(TRAJECTORY_KINDS)}); "
                             "no such pose file (any layout) or video")
        if len(track) < num_frames:
            hint = ""
            if is_video_source(spec):
                hint = (f" (frames that failed to register are left out: see `python data_prep/annotate_poses.py "
                        f"{spec} --stride {stride} --max-frames {num_frames}`; --interpolate fills them)")
            raise ValueError(f"trajectory={spec}: {len(track)} cameras, the model generates {num_frames} frames{hint}")
        track = transfer_track(track, target_hw, translation_scale, num_frames,
                               source_hw if Path(spec).is_file() and not is_video_source(spec) else None)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_re10k(out, Cameras(track, target_hw[1], target_hw[0]))
        resolved.append(str(out))
    return resolved


def save_path_picture(folder: str | Path, K, c2w, hw: tuple[int, int], label: str) -> Path:
    """``folder/cameras.png``: the requested camera path of a sample, drawn by the viewer."""
    from camvid.viz import plot_cameras

    path = Path(folder) / "cameras.png"
    plot_cameras(c2w, path, labels=[label], K=K, image_hw=hw, title=f"requested cameras: {label}")
    return path
