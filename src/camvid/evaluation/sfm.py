"""Camera poses of one video by structure-from-motion (pycolmap), the CamI2V protocol.

CamI2V appendix B: one SIMPLE_PINHOLE camera shared by the clip with the GT intrinsics fixed,
SIFT with affine shape and domain-size pooling, exhaustive matching with guided matching and up to
65536 matches, GLOMAP global mapping without intrinsics refinement and a 4 px epipolar tolerance.

COLMAP 4 runs GLOMAP inside pycolmap and takes the relative poses from the verified two-view
geometries in the database, so the paper's ``RelPoseEstimation.max_epipolar_error=4`` is the
RANSAC ``max_error`` of match verification here (4 px, also COLMAP's default).

SIFT extraction is deterministic, so it runs once per video; each trial copies that database and
repeats matching (guided matching and verification use RANSAC) and mapping with its own seed.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np

__all__ = ["SfmOptions", "SfmTrial", "frame_name", "write_frames", "extract_features", "run_trial", "run_sfm"]


@dataclass
class SfmOptions:
    """Knobs of the pipeline; the defaults are CamI2V's."""

    matcher: str = "exhaustive"  # "exhaustive" (CamI2V) or "sequential"
    mapper: str = "global"  # "global" (GLOMAP, CamI2V) or "incremental"
    estimate_affine_shape: bool = True
    domain_size_pooling: bool = True
    max_num_features: int = 8192
    guided_matching: bool = True
    max_num_matches: int = 65536
    max_epipolar_error: float = 4.0
    sequential_overlap: int = 10
    num_threads: int = 1  # per video; parallelism comes from running several videos at once
    use_gpu: bool = False
    # evaluation-only upscale of the frames (bicubic, intrinsics scaled alike) before feature
    # extraction: SIFT finds too few keypoints in 64x64 frames (the tiny synthetic world); 1 = off
    upscale: int = 1
    # SIFT's peak (contrast) threshold; None keeps COLMAP's (0.02 / octave resolution 3 = 0.0067).
    # Lower finds keypoints in low-contrast frames: the tiny world's blurred generated videos need
    # about 0.002 (docs/evaluation.md, "Camera accuracy in the tiny world")
    peak_threshold: float | None = None

    def __post_init__(self) -> None:
        if int(self.upscale) != self.upscale or self.upscale < 1:
            raise ValueError(f"SfmOptions.upscale must be a whole number >= 1, got {self.upscale}")
        if self.peak_threshold is not None and not (0 < float(self.peak_threshold) < 1):
            raise ValueError(f"SfmOptions.peak_threshold must be in (0, 1) or None, got {self.peak_threshold}")
        if self.matcher not in ("exhaustive", "sequential"):
            raise ValueError(f"SfmOptions.matcher must be 'exhaustive' or 'sequential', got {self.matcher!r}")
        if self.mapper not in ("global", "incremental"):
            raise ValueError(f"SfmOptions.mapper must be 'global' or 'incremental', got {self.mapper!r}")
        if self.max_epipolar_error <= 0:
            raise ValueError(f"SfmOptions.max_epipolar_error must be positive, got {self.max_epipolar_error}")


@dataclass
class SfmTrial:
    """One mapping trial. ``c2w`` holds every frame's camera-to-world pose when it succeeded."""

    seed: int
    success: bool
    num_registered: int
    num_frames: int
    reason: str = ""
    c2w: np.ndarray | None = None  # (T, 4, 4) float64, SfM world frame and scale
    # every registered frame's pose (NaN rows for the others) and the reconstruction's pixel K,
    # also for a partial reconstruction (pose annotation reports and keeps what registered)
    frame_c2w: np.ndarray | None = None
    K: np.ndarray | None = None


def frame_name(index: int) -> str:
    return f"frame_{index:04d}.png"


def write_frames(frames: np.ndarray, image_dir: Path) -> None:
    """Lossless PNG frames; the mp4 decode already carries whatever compression the video had."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        iio.imwrite(image_dir / frame_name(i), frame)


def _simple_pinhole_params(K: np.ndarray) -> str:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0:
        raise ValueError(f"intrinsics must be a finite (3, 3) pixel matrix with fx > 0, got {K!r}")
    # SIMPLE_PINHOLE has one focal length; CamI2V passes fx (square pixels make fx == fy in pixels).
    return ",".join(repr(float(v)) for v in (K[0, 0], K[0, 2], K[1, 2]))


def extract_features(image_dir: Path, database: Path, K: np.ndarray | None, options: SfmOptions) -> None:
    """SIFT into ``database``; ``K=None`` leaves the focal length to COLMAP's prior (to be refined)."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"
    if K is not None:
        reader.camera_params = _simple_pinhole_params(K)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = options.num_threads
    extraction.use_gpu = options.use_gpu
    extraction.sift.estimate_affine_shape = options.estimate_affine_shape
    extraction.sift.domain_size_pooling = options.domain_size_pooling
    extraction.sift.max_num_features = options.max_num_features
    if options.peak_threshold is not None:
        extraction.sift.peak_threshold = float(options.peak_threshold)
    pycolmap.extract_features(
        database,
        image_dir,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cuda if options.use_gpu else pycolmap.Device.cpu,
    )


def _match(database: Path, options: SfmOptions, seed: int) -> None:
    import pycolmap

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = options.num_threads
    matching.use_gpu = options.use_gpu
    matching.guided_matching = options.guided_matching
    matching.max_num_matches = options.max_num_matches
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.max_error = options.max_epipolar_error
    verification.ransac.random_seed = seed
    device = pycolmap.Device.cuda if options.use_gpu else pycolmap.Device.cpu
    if options.matcher == "exhaustive":
        pycolmap.match_exhaustive(
            database, matching_options=matching, verification_options=verification, device=device
        )
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = options.sequential_overlap
        pycolmap.match_sequential(
            database,
            matching_options=matching,
            pairing_options=pairing,
            verification_options=verification,
            device=device,
        )


def _map(database: Path, image_dir: Path, out_dir: Path, options: SfmOptions, seed: int,
         refine_focal_length: bool = False) -> dict:
    import pycolmap

    out_dir.mkdir(parents=True, exist_ok=True)
    # A trial that fails to map is counted and reported by the caller; COLMAP's own ERROR lines about
    # it ("Global mapping failed") would only break the progress bars, so they are kept to FATAL.
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = max(level, 3)
    try:
        return _run_mapper(database, image_dir, out_dir, options, seed, refine_focal_length)
    finally:
        pycolmap.logging.minloglevel = level


def _run_mapper(database: Path, image_dir: Path, out_dir: Path, options: SfmOptions, seed: int,
                refine_focal_length: bool) -> dict:
    import pycolmap

    if options.mapper == "global":
        pipeline = pycolmap.GlobalPipelineOptions()
        pipeline.num_threads = options.num_threads
        pipeline.random_seed = seed
        mapper = pipeline.mapper
        mapper.num_threads = options.num_threads
        mapper.random_seed = seed
        mapper.rotation_averaging.random_seed = seed
        mapper.global_positioning.random_seed = seed
        mapper.global_positioning.use_gpu = options.use_gpu
        mapper.retriangulation.random_seed = seed
        ba = mapper.bundle_adjustment
        ba.refine_focal_length = refine_focal_length
        ba.refine_principal_point = False
        ba.refine_extra_params = False
        ba.ceres.use_gpu = options.use_gpu
        ba.ceres.solver_options.num_threads = options.num_threads
        return pycolmap.global_mapping(database, image_dir, out_dir, pipeline)
    pipeline = pycolmap.IncrementalPipelineOptions()
    pipeline.num_threads = options.num_threads
    pipeline.random_seed = seed
    pipeline.ba_refine_focal_length = refine_focal_length
    pipeline.ba_refine_principal_point = False
    pipeline.ba_refine_extra_params = False
    pipeline.ba_use_gpu = options.use_gpu
    return pycolmap.incremental_mapping(database, image_dir, out_dir, pipeline)


def _poses_from(reconstructions: dict, num_frames: int) -> tuple[np.ndarray | None, int, np.ndarray | None]:
    """c2w of the frames in the largest model (NaN rows for the others), their count, the model's K."""
    if not reconstructions:
        return None, 0, None
    best = max(reconstructions.values(), key=lambda rec: rec.num_reg_images())
    names = {frame_name(i): i for i in range(num_frames)}
    c2w = np.full((num_frames, 4, 4), np.nan)
    registered = 0
    for image in best.images.values():
        if image.name not in names or not image.has_pose:
            continue
        w2c = np.eye(4)
        w2c[:3, :] = image.cam_from_world().matrix()
        c2w[names[image.name]] = np.linalg.inv(w2c)
        registered += 1
    K = next(iter(best.cameras.values())).calibration_matrix() if best.cameras else None
    return c2w, registered, K


def run_trial(image_dir: Path, features_db: Path, work_dir: Path, num_frames: int, seed: int,
              options: SfmOptions, refine_focal_length: bool = False) -> SfmTrial:
    """Match and map once with ``seed``; a trial succeeds only when every frame is registered."""
    import pycolmap

    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "database.db"
    shutil.copyfile(features_db, database)
    pycolmap.set_random_seed(seed)
    try:
        _match(database, options, seed)
        reconstructions = _map(database, image_dir, work_dir / "model", options, seed, refine_focal_length)
    except Exception as err:  # pycolmap raises RuntimeError subclasses on degenerate input
        return SfmTrial(seed, False, 0, num_frames, reason=f"pycolmap error: {err}")
    c2w, registered, K = _poses_from(reconstructions, num_frames)
    if registered < num_frames:
        reason = "no reconstruction" if registered == 0 else f"registered {registered}/{num_frames} frames"
        return SfmTrial(seed, False, registered, num_frames, reason=reason, frame_c2w=c2w, K=K)
    return SfmTrial(seed, True, registered, num_frames, c2w=c2w, frame_c2w=c2w, K=K)


def upscale_frames(frames: np.ndarray, K: np.ndarray | None, factor: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames resized ``factor`` times (bicubic) and the intrinsics that go with them (pixel centres
    at +0.5 scale exactly: focal lengths and principal point times ``factor``; None stays None).
    Intrinsics an SfM trial estimates are then in the upscaled pixels."""
    from PIL import Image

    T, H, W = frames.shape[:3]
    big = np.stack([np.asarray(Image.fromarray(f).resize((W * factor, H * factor), Image.BICUBIC)) for f in frames])
    if K is None:
        return big, None
    K = np.array(K, dtype=np.float64)
    K[:2] *= factor
    return big, K


def run_sfm(frames: np.ndarray, K: np.ndarray | None, seeds: list[int], options: SfmOptions | None = None,
            work_dir: str | Path | None = None) -> list[SfmTrial]:
    """All trials of one video: (T, H, W, 3) uint8 frames, (3, 3) pixel intrinsics of the clip.

    ``K=None`` estimates the focal length (COLMAP's prior, refined by bundle adjustment); the
    principal point stays at the image centre."""
    options = options or SfmOptions()
    frames = np.asarray(frames)
    if options.upscale > 1:
        frames, K = upscale_frames(frames, K, int(options.upscale))
    keep = work_dir is not None
    root = Path(work_dir) if keep else Path(tempfile.mkdtemp(prefix="camvid_sfm_"))
    try:
        image_dir = root / "images"
        write_frames(frames, image_dir)
        features_db = root / "features.db"
        features_db.unlink(missing_ok=True)
        extract_features(image_dir, features_db, K, options)
        return [
            run_trial(image_dir, features_db, root / f"trial_{i}", len(frames), seed, options,
                      refine_focal_length=K is None)
            for i, seed in enumerate(seeds)
        ]
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
