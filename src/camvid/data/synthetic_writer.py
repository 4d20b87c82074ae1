"""Write the synthetic data sets to disk in RealEstate10K's and WebVid's own layouts.

Everything is a pure function of the seed, so two runs with the same arguments produce the same
bytes (PNG encoding is deterministic).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camvid.data import synthetic
from camvid.data.layout import FRAME_NAME, WEBVID_COLUMNS, depth_path, frame_dir
from camvid.fsutil import share_like_umask
from camvid.geometry.cameras import CameraTrack, write_pose_file

__all__ = [
    "ensure_synthetic_dataset",
    "SyntheticSplit",
    "clip_split",
    "write_synthetic_re10k",
    "render_planar_video",
    "write_synthetic_webvid",
]

FRAME_PERIOD_US = 33_333  # 30 fps timestamps, as in RealEstate10K


@dataclass
class SyntheticSplit:
    train: list[str]
    test: list[str]


def clip_split(index: int, test_every: int) -> str:
    """Every ``test_every``-th clip goes to the test split (deterministic, no shuffling needed)."""
    return "test" if test_every > 0 and index % test_every == test_every - 1 else "train"


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def write_synthetic_re10k(
    out: str | Path,
    num_clips: int,
    num_frames: int,
    height: int,
    width: int,
    seed: int = 0,
    test_every: int = 5,
    fov_range: tuple[float, float] = (50.0, 70.0),
    depth_dtype: str = "float16",
    kinds: tuple[str, ...] = synthetic.TRAJECTORY_KINDS,
    texture_size: int = 512,
    trajectories_per_scene: int = 1,
) -> SyntheticSplit:
    """Render ``num_clips`` clips (one scene and one trajectory each) into ``out``.

    Clip ``i`` uses trajectory kind ``kinds[i % len(kinds)]``; its scene, trajectory and field of
    view are drawn from ``(seed, i)``; the pose file's URL line records how to rebuild them
    (``synthetic://camvid/scene/<scene_seed>/<kind>/<texture_size>``: ``make_scene(scene_seed,
    texture_size)`` and ``make_trajectory(kind, num_frames, scene_seed)``). Returns the clip ids of
    each split.

    ``trajectories_per_scene`` N > 1: clips ``i`` with the same ``i // N`` share one scene, field of
    view and first camera (drawn from ``(seed, i // N)``) and leave it along different trajectories (kind
    and motion from ``(seed, i)``), so the first frame alone does not tell which video follows; the URL
    line is then ``.../scene/<scene_seed>/<kind>/<texture_size>/<trajectory_seed>`` (``make_trajectory(kind,
    num_frames, trajectory_seed, start_seed=scene_seed)``). The split is per scene (``test_every``
    counts scenes), so no test scene is seen in training.
    """
    if trajectories_per_scene < 1:
        raise ValueError(f"write_synthetic_re10k: trajectories_per_scene must be >= 1, got {trajectories_per_scene}")
    if num_clips < 1 or num_frames < 1:
        raise ValueError(f"write_synthetic_re10k: need num_clips >= 1 and num_frames >= 1, got {num_clips}, {num_frames}")
    if depth_dtype not in ("float16", "float32"):
        raise ValueError(f"write_synthetic_re10k: depth_dtype must be float16 or float32, got {depth_dtype!r}")
    unknown = [k for k in kinds if k not in synthetic.TRAJECTORY_KINDS]
    if unknown or not kinds:
        raise ValueError(f"write_synthetic_re10k: unknown trajectory kinds {unknown}; use {synthetic.TRAJECTORY_KINDS}")
    out = Path(out)
    captions: dict[str, str] = {}
    split = SyntheticSplit([], [])
    per = int(trajectories_per_scene)
    for i in range(num_clips):
        clip_seed = int(np.random.default_rng([seed, i]).integers(0, 2**31 - 1))
        scene_seed = int(np.random.default_rng([seed, i // per]).integers(0, 2**31 - 1))
        kind = kinds[i % len(kinds)]
        clip_id = f"syn{seed:04d}{i:06d}"
        name = clip_split(i // per, test_every)
        scene = synthetic.make_scene(scene_seed, texture_size)
        if per == 1:
            c2w = synthetic.make_trajectory(kind, num_frames, clip_seed)
            url = f"synthetic://camvid/scene/{clip_seed}/{kind}/{texture_size}"
        else:
            c2w = synthetic.make_trajectory(kind, num_frames, clip_seed, start_seed=scene_seed)
            url = f"synthetic://camvid/scene/{scene_seed}/{kind}/{texture_size}/{clip_seed}"
        fov = float(np.random.default_rng([scene_seed, 1]).uniform(*fov_range))
        K = synthetic.default_intrinsics(height, width, fov)
        frames, depth = synthetic.render_frames(scene, K, c2w, height, width)

        fdir = frame_dir(out, name, clip_id)
        fdir.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            _save_png(fdir / FRAME_NAME.format(t), frame)
        dpath = depth_path(out, name, clip_id)
        dpath.parent.mkdir(parents=True, exist_ok=True)
        np.save(dpath, depth.astype(depth_dtype))
        norm_k = np.array([K[0, 0] / width, K[1, 1] / height, K[0, 2] / width, K[1, 2] / height])
        track = CameraTrack(
            url=url,
            timestamps=np.arange(num_frames, dtype=np.int64) * FRAME_PERIOD_US,
            intrinsics=np.tile(norm_k, (num_frames, 1)),
            w2c=np.linalg.inv(c2w)[:, :3, :],
        )
        write_pose_file(out / name / f"{clip_id}.txt", track)
        captions[clip_id] = synthetic.describe_clip(scene, kind)
        getattr(split, name).append(clip_id)
    (out / "captions.json").write_text(json.dumps(captions, indent=1, sort_keys=True) + "\n")
    return split


# --------------------------------------------------------------------------------------------
# WebVid-like: 2-D content under a moving, zooming, turning view (no 3-D camera)


def _bilinear_wrap(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    S_h, S_w = img.shape[:2]
    x0, y0 = np.floor(x), np.floor(y)
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(np.int64) % S_w, y0.astype(np.int64) % S_h
    x1, y1 = (x0 + 1) % S_w, (y0 + 1) % S_h
    return (
        img[y0, x0] * (1 - ax) * (1 - ay) + img[y0, x1] * ax * (1 - ay)
        + img[y1, x0] * (1 - ax) * ay + img[y1, x1] * ax * ay
    )


def render_planar_video(
    seed: int, num_frames: int, height: int, width: int
) -> tuple[np.ndarray, str]:
    """A textured plane seen through a drifting/zooming/turning window, with a sprite moving on it.

    Returns ``(T, H, W, 3)`` uint8 frames and a caption describing the motion.
    """
    rng = np.random.default_rng([seed, 0x3EB])
    names = list(synthetic.PALETTE)
    bg_name, fg_name = rng.choice(names, 2, replace=False)
    canvas = synthetic.make_texture(rng, np.asarray(synthetic.PALETTE[bg_name]), str(rng.choice(["plain", "stripes", "tiles"])), 512)
    sprite = synthetic.make_texture(rng, np.asarray(synthetic.PALETTE[fg_name]), "plain", 128)
    s = np.linspace(0.0, 1.0, num_frames)[:, None]
    drift = rng.normal(0, 1, 2)
    drift = drift / np.linalg.norm(drift) * rng.uniform(20, 80)
    zoom = np.exp(rng.uniform(-0.4, 0.4) * s[:, 0])
    turn = rng.uniform(-0.3, 0.3) * s[:, 0]
    centre = rng.uniform(0, 512, 2) + drift * s
    sprite_pos = rng.uniform(0.25, 0.75, 2) * [width, height] + rng.normal(0, 0.25, 2) * [width, height] * s
    sprite_r = rng.uniform(0.12, 0.22) * min(height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    px, py = xs + 0.5 - width / 2, ys + 0.5 - height / 2
    per_pixel = 512 / max(height, width) * 0.7  # canvas texels per output pixel at zoom 1
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        c, sn = np.cos(turn[t]), np.sin(turn[t])
        k = per_pixel / zoom[t]
        cx = centre[t, 0] + k * (c * px - sn * py)
        cy = centre[t, 1] + k * (sn * px + c * py)
        img = _bilinear_wrap(canvas, cx, cy)
        dx, dy = xs + 0.5 - sprite_pos[t, 0], ys + 0.5 - sprite_pos[t, 1]
        inside = (dx**2 + dy**2) <= sprite_r**2
        spr = _bilinear_wrap(sprite, dx * 2 + 64, dy * 2 + 64)
        img = np.where(inside[..., None], spr, img)
        frames[t] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    horiz = "left" if drift[0] > 0 else "right"
    zooming = "zooming in" if zoom[-1] > 1 else "zooming out"
    caption = f"a {fg_name} ball moves over a {bg_name} patterned surface, view drifting {horiz} and {zooming}"
    return frames, caption


def write_synthetic_webvid(
    out: str | Path,
    num_clips: int,
    num_frames: int,
    height: int,
    width: int,
    seed: int = 0,
    video_format: str = "png",
    fps: int = 8,
) -> list[str]:
    """Write a WebVid-like set: ``out/webvid.csv`` and ``out/videos/<page_dir>/<videoid>{.mp4,/}``."""
    if video_format not in ("png", "mp4"):
        raise ValueError(f"write_synthetic_webvid: video_format must be 'png' or 'mp4', got {video_format!r}")
    if num_clips < 1 or num_frames < 1:
        raise ValueError(f"write_synthetic_webvid: need num_clips >= 1 and num_frames >= 1, got {num_clips}, {num_frames}")
    out = Path(out)
    rows, ids = [], []
    for i in range(num_clips):
        videoid = f"{seed:04d}{i:07d}"
        page_dir = f"{i // 100:03d}_{(i // 100) * 100:05d}_{(i // 100) * 100 + 99:05d}"
        frames, caption = render_planar_video(int(np.random.default_rng([seed, i, 7]).integers(2**31 - 1)), num_frames, height, width)
        base = out / "videos" / page_dir
        base.mkdir(parents=True, exist_ok=True)
        if video_format == "mp4":
            import imageio.v2 as imageio

            with imageio.get_writer(base / f"{videoid}.mp4", fps=fps, codec="libx264", quality=9, macro_block_size=1) as w:
                for frame in frames:
                    w.append_data(frame)
        else:
            (base / videoid).mkdir(exist_ok=True)
            for t, frame in enumerate(frames):
                _save_png(base / videoid / FRAME_NAME.format(t), frame)
        rows.append(
            {
                "videoid": videoid,
                "contentUrl": f"synthetic://camvid/webvid/{videoid}",
                "duration": f"PT00H00M{num_frames // fps:02d}S",
                "page_dir": page_dir,
                "name": caption,
            }
        )
        ids.append(videoid)
    with (out / "webvid.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(WEBVID_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return ids


def ensure_synthetic_dataset(
    root: str | Path,
    num_clips: int = 20,
    num_frames: int = 32,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    webvid_clips: int = 0,
    texture_size: int | None = None,
    test_every: int = 5,
) -> Path:
    """Render the synthetic RealEstate10K set (and ``webvid_clips`` WebVid-like clips under
    ``root/webvid``) unless ``root`` already holds it; returns ``root``.

    ``texture_size=None`` picks one from the render size (128 for 64 px, 256 for 96-128 px, 512
    from 256 px). Safe when several ranks call it at once: each renders into a private temporary directory
    and renames it into place; the first rename wins, the others discard their identical copy.
    """
    root = Path(root)
    if (root / "captions.json").is_file():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        # never render over (or beside) someone else's files: the rename below could not succeed anyway
        raise FileExistsError(f"{root} exists and is not the synthetic dataset (no captions.json in it) nor an "
                              "empty folder; point data.root at the synthetic rooms' folder (e.g. "
                              f"{root / 'synthetic'}) or at a new path to render them there")
    if texture_size is None:
        # About two texels per pixel at 1.5 m: enough detail, without 512-texel build times for tiny renders.
        texture_size = int(min(512, max(64, 2 ** np.ceil(np.log2(2 * max(height, width))))))
    root.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp makes a 0700 directory: give it the umask's mode so collaborators can read it once renamed
    tmp = share_like_umask(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write_synthetic_re10k(tmp, num_clips, num_frames, height, width, seed=seed, texture_size=texture_size,
                              test_every=test_every)
        if webvid_clips:
            write_synthetic_webvid(tmp / "webvid", webvid_clips, num_frames, height, width, seed=seed)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "captions.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
