"""Pose annotation of any video: frames -> structure-from-motion -> a RealEstate10K pose file.

The SfM is the evaluation's (:mod:`camvid.evaluation.sfm`, CamI2V appendix B settings): SIFT with
affine shape and domain-size pooling, guided exhaustive matching, GLOMAP global mapping, one
SIMPLE_PINHOLE camera for the clip. The intrinsics are either given (fixed, as in the evaluation)
or estimated (COLMAP's focal prior refined by bundle adjustment, principal point at the centre).

Poses are made relative to the first written frame. The scale is left as SfM's or normalised as
the evaluation does (the camera furthest from the first at distance 1); the choice is written in
the file's header line. Frames that fail to register are reported with the reason (few SIFT
features: blurry or textureless; no verified matches; matched but left out by the mapper) and are
left out of the file, never silently filled; ``interpolate=True`` fills them (rotation slerp,
centre lerp; held at the ends) and lists them in the header.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camvid.evaluation.sfm import SfmOptions, SfmTrial, run_sfm
from camvid.geometry.cameras import CameraTrack
from camvid.geometry.conventions import c2w_to_w2c, quaternion_to_rotation, rotation_to_quaternion

__all__ = [
    "SCALES",
    "AnnotateOptions",
    "AnnotationResult",
    "AnnotationFailed",
    "read_frames",
    "frame_sharpness",
    "interpolate_poses",
    "annotate_frames",
    "annotate_video",
]

SCALES = ("sfm", "normalized")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MIN_FEATURES = 64  # fewer SIFT features than this: the frame is blurry, textureless or dark


@dataclass
class AnnotateOptions:
    stride: int = 1  # every stride-th frame of the video
    max_frames: int | None = None  # after the stride
    max_size: int | None = 640  # longest side of the frames SfM sees (intrinsics are normalised, so unchanged)
    intrinsics: tuple[float, float, float, float] | None = None  # normalised fx, fy, cx, cy; None: estimated
    scale: str = "normalized"  # "sfm" or "normalized" (furthest camera at distance 1)
    interpolate: bool = False  # fill unregistered frames (marked in the header) instead of leaving them out
    trials: int = 1  # mapping trials (different seeds); the one registering the most frames is kept
    seed: int = 0
    fps: float | None = None  # frame rate of a frame folder (timestamps); videos use their own
    sfm: SfmOptions = field(default_factory=SfmOptions)

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.scale not in SCALES:
            raise ValueError(f"scale={self.scale!r}: expected one of {', '.join(SCALES)}")
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.intrinsics is not None:
            k = tuple(float(v) for v in self.intrinsics)
            if len(k) != 4 or not all(math.isfinite(v) for v in k) or k[0] <= 0 or k[1] <= 0:
                raise ValueError(f"intrinsics must be 4 finite normalised numbers fx,fy,cx,cy with fx, fy > 0, "
                                 f"got {self.intrinsics}")
            self.intrinsics = k


class AnnotationFailed(RuntimeError):
    """SfM registered too few frames; ``result`` holds the per-frame report."""

    def __init__(self, message: str, result: AnnotationResult):
        super().__init__(message)
        self.result = result


@dataclass
class AnnotationResult:
    track: CameraTrack  # what the pose file holds
    frame_indices: np.ndarray  # (N,) source frame numbers of the sampled frames
    registered: np.ndarray  # (N,) bool
    failures: dict[int, str]  # source frame number -> why it failed to register
    interpolated: list[int]  # source frame numbers filled by interpolation (in the track)
    K: np.ndarray | None  # (3, 3) pixel intrinsics used / estimated, at ``size``
    size: tuple[int, int]  # (width, height) of the frames SfM saw
    source: str
    trial_reasons: list[str] = field(default_factory=list)

    def report(self) -> str:
        n, r = len(self.frame_indices), int(self.registered.sum())
        lines = [f"{self.source}: {r}/{n} sampled frames registered"]
        if self.K is not None:
            w, h = self.size
            lines.append(f"  intrinsics (normalised fx fy cx cy): {self.K[0, 0] / w:.4f} {self.K[1, 1] / h:.4f} "
                         f"{self.K[0, 2] / w:.4f} {self.K[1, 2] / h:.4f}")
        for frame, reason in sorted(self.failures.items()):
            filled = " -> interpolated" if frame in self.interpolated else " -> left out"
            lines.append(f"  frame {frame}: {reason}{filled}")
        lines += [f"  trial: {t}" for t in self.trial_reasons if t]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# frames


def _resize(frame: np.ndarray, max_size: int | None) -> np.ndarray:
    if max_size is None or max(frame.shape[:2]) <= max_size:
        return frame
    from PIL import Image

    h, w = frame.shape[:2]
    s = max_size / max(h, w)
    return np.asarray(Image.fromarray(frame).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS))


def read_frames(source: str | Path, stride: int = 1, max_frames: int | None = None, max_size: int | None = None,
                fps: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Frames of a video file (PyAV) or a folder of images, every ``stride``-th.

    Returns uint8 (N, H, W, 3), the source frame numbers (N,) and the frame rate."""
    source = Path(source)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    frames, indices = [], []
    if source.is_dir():
        from PIL import Image

        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        for i in range(0, len(files), stride):
            if max_frames is not None and len(frames) >= max_frames:
                break
            frames.append(_resize(np.asarray(Image.open(files[i]).convert("RGB")), max_size))
            indices.append(i)
        rate = float(fps or 30.0)
    elif source.is_file():
        import imageio.v3 as iio

        try:
            meta = iio.immeta(source, plugin="pyav")
            rate = float(fps or meta.get("fps") or 30.0)
            for i, frame in enumerate(iio.imiter(source, plugin="pyav")):
                if max_frames is not None and len(frames) >= max_frames:
                    break
                if i % stride == 0:
                    frames.append(_resize(np.asarray(frame)[..., :3], max_size))
                    indices.append(i)
        except Exception as err:  # PyAV raises its own error types for unreadable containers
            raise ValueError(f"{source}: cannot decode the video ({err})") from None
    else:
        raise FileNotFoundError(f"video or frame folder not found: {source}")
    if not frames:
        raise ValueError(f"{source}: no frames decoded")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"{source}: frames differ in size {sorted(shapes)}")
    return np.stack(frames).astype(np.uint8), np.asarray(indices, dtype=np.int64), rate


def frame_sharpness(frames: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each frame's grey image (low: blurry or flat)."""
    grey = frames.astype(np.float64).mean(-1)
    lap = (grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1]
           - 4 * grey[:, 1:-1, 1:-1])
    return lap.reshape(len(frames), -1).var(-1)


# --------------------------------------------------------------------------------------------
# poses


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    if np.dot(q0, q1) < 0:
        q1 = -q1
    d = float(np.clip(np.dot(q0, q1), -1.0, 1.0))
    theta = math.acos(d)
    if theta < 1e-9:
        return q0
    return (math.sin((1 - a) * theta) * q0 + math.sin(a * theta) * q1) / math.sin(theta)


def interpolate_poses(c2w: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the frames with ``known == False``: rotation slerp and centre lerp between the nearest
    known frames (in frame order), held constant before the first / after the last known frame."""
    c2w = np.array(c2w, dtype=np.float64)
    idx = np.nonzero(known)[0]
    if len(idx) == 0:
        raise ValueError("interpolate_poses: no known frame to interpolate from")
    q = rotation_to_quaternion(c2w[idx, :3, :3])
    for t in np.nonzero(~known)[0]:
        after = np.searchsorted(idx, t)
        if after == 0 or after == len(idx):
            c2w[t] = c2w[idx[0] if after == 0 else idx[-1]]
            continue
        i0, i1 = idx[after - 1], idx[after]
        a = (t - i0) / (i1 - i0)
        c2w[t] = np.eye(4)
        c2w[t, :3, :3] = quaternion_to_rotation(_slerp(q[after - 1], q[after], a))
        c2w[t, :3, 3] = (1 - a) * c2w[i0, :3, 3] + a * c2w[i1, :3, 3]
    return c2w


def _frame_diagnostics(database: Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """SIFT features and verified (inlier) matches summed over partners, per frame."""
    import pycolmap

    from camvid.evaluation.sfm import frame_name

    features = np.zeros(num_frames, dtype=np.int64)
    inliers = np.zeros(num_frames, dtype=np.int64)
    if not database.is_file():
        return features, inliers
    db = pycolmap.Database.open(database)
    try:
        index = {frame_name(i): i for i in range(num_frames)}
        by_id = {}
        for image in db.read_all_images():
            if image.name in index:
                by_id[image.image_id] = index[image.name]
                features[index[image.name]] = db.num_keypoints_for_image(image.image_id)
        pair_ids, counts = db.read_two_view_geometry_num_inliers()
        for pair_id, count in zip(pair_ids, counts):
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            for image_id in (a, b):
                if image_id in by_id:
                    inliers[by_id[image_id]] += count
    finally:
        db.close()
    return features, inliers


def _failure_reason(features: int, inliers: int, sharpness: float, median_sharpness: float) -> str:
    blur = f"sharpness {sharpness:.3g} vs median {median_sharpness:.3g}"
    if features < MIN_FEATURES:
        return f"only {features} SIFT features (blurry, textureless or dark frame; {blur})"
    if inliers == 0:
        return f"{features} SIFT features but no verified matches to any other frame (too different, or {blur})"
    return f"{features} features and {inliers} verified matches, but the mapper did not register it ({blur})"


def _pick_trial(trials: list[SfmTrial]) -> tuple[int, SfmTrial]:
    return max(enumerate(trials), key=lambda it: (it[1].num_registered, -it[0]))


def annotate_frames(frames: np.ndarray, frame_indices=None, fps: float = 30.0,
                    options: AnnotateOptions | None = None, source: str = "frames") -> AnnotationResult:
    """Annotate uint8 (N, H, W, 3) frames (already sampled); see :func:`annotate_video`."""
    import pycolmap

    options = options or AnnotateOptions()
    frames = np.asarray(frames)
    n = len(frames)
    indices = np.arange(n) if frame_indices is None else np.asarray(frame_indices, dtype=np.int64)
    if n < 3:
        raise ValueError(f"{source}: {n} frame(s) after stride {options.stride}; structure-from-motion needs at "
                         "least 3 (use a smaller --stride or a longer video)")
    h, w = frames.shape[1:3]
    K = None
    if options.intrinsics is not None:
        fx, fy, cx, cy = options.intrinsics
        K = np.array([[fx * w, 0, cx * w], [0, fy * h, cy * h], [0, 0, 1.0]])
        if abs(K[0, 0] / K[1, 1] - 1) > 0.01:
            raise ValueError(f"intrinsics {options.intrinsics}: pixels are not square at {w}x{h} (fx*W = {K[0, 0]:.1f}, "
                             f"fy*H = {K[1, 1]:.1f}); the pipeline's SIMPLE_PINHOLE camera has one focal length")
    seeds = [options.seed + i for i in range(options.trials)]
    pycolmap.logging.minloglevel = 2
    work = Path(tempfile.mkdtemp(prefix="camvid_annotate_"))
    try:
        trials = run_sfm(frames, K, seeds, options.sfm, work_dir=work)
        best_i, best = _pick_trial(trials)
        features, inliers = _frame_diagnostics(work / f"trial_{best_i}" / "database.db", n)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sharp = frame_sharpness(frames)
    med = float(np.median(sharp))
    c2w = best.frame_c2w if best.frame_c2w is not None else np.full((n, 4, 4), np.nan)
    registered = np.isfinite(c2w).reshape(n, -1).all(1)
    failures = {int(indices[t]): _failure_reason(int(features[t]), int(inliers[t]), float(sharp[t]), med)
                for t in np.nonzero(~registered)[0]}
    trial_reasons = [f"seed {t.seed}: {t.reason}" for t in trials if t.reason]
    K_out = best.K if best.K is not None else K
    result = AnnotationResult(
        track=CameraTrack("", np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros((0, 3, 4))),
        frame_indices=indices, registered=registered, failures=failures, interpolated=[], K=K_out,
        size=(w, h), source=source, trial_reasons=trial_reasons)
    if registered.sum() < 2:
        raise AnnotationFailed(f"{source}: structure-from-motion registered {int(registered.sum())} of {n} frames; "
                               "no camera path\n" + result.report(), result)

    keep = np.ones(n, bool) if options.interpolate else registered
    if options.interpolate and not registered.all():
        c2w = interpolate_poses(c2w, registered)
        result.interpolated = [int(indices[t]) for t in np.nonzero(~registered)[0]]
    c2w = c2w[keep]
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    if options.scale == "normalized":
        furthest = np.linalg.norm(rel[:, :3, 3], axis=-1).max()
        if furthest > 1e-12:
            rel[:, :3, 3] /= furthest
    intr = np.array([K_out[0, 0] / w, K_out[1, 1] / h, K_out[0, 2] / w, K_out[1, 2] / h])
    timestamps = np.round(indices[keep] * 1e6 / fps).astype(np.int64)
    header = _header(source, options, result, n, K is None)
    result.track = CameraTrack(header, timestamps, np.tile(intr, (int(keep.sum()), 1)), c2w_to_w2c(rel)[:, :3, :])
    return result


def _header(source: str, options: AnnotateOptions, result: AnnotationResult, n: int, estimated: bool) -> str:
    parts = [f"camvid-annotate source={Path(source).name}", f"stride={options.stride}",
             f"registered={int(result.registered.sum())}/{n}", f"scale={options.scale}",
             f"intrinsics={'estimated' if estimated else 'given'}", "relative_to=first_frame"]
    if result.failures:
        parts.append("failed=" + ",".join(str(f) for f in sorted(result.failures)))
    if result.interpolated:
        parts.append("interpolated=" + ",".join(str(f) for f in result.interpolated))
    return " ".join(parts)


def annotate_video(source: str | Path, options: AnnotateOptions | None = None) -> AnnotationResult:
    """A video file or a folder of frames -> camera path (``result.track``, a RealEstate10K track)
    and a per-frame report. Raises :class:`AnnotationFailed` (with the report) when fewer than two
    frames register, ``ValueError`` for a video too short for SfM."""
    options = options or AnnotateOptions()
    frames, indices, fps = read_frames(source, options.stride, options.max_frames, options.max_size, options.fps)
    return annotate_frames(frames, indices, fps, options, source=str(source))
