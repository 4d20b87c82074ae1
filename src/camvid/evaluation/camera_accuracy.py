"""Camera accuracy of a set of videos: SfM trials per video, RotErr / TransErr / CamMC, failure rate.

Aggregation follows CamI2V: errors are averaged over a video's successful trials, then over
videos. Unlike CamI2V's public script (which skips a video whose SfM raised), a failed trial is
kept and counted: every video appears in the per-video table with its trial successes, a video
with no successful trial has no error numbers and counts in ``video_failure_rate``, and
``trial_failure_rate`` is the share of all trials that failed.

Per-video results are cached as JSON keyed by the options and seeds, so an interrupted run
resumes where it stopped.

``first_frame`` leaves the frames before it out of SfM and of the errors (the requested poses are
cut alike, and the errors are taken relative to the first frame kept). The papers evaluate every
frame (0); the tiny synthetic world uses 1: its generated videos reproduce the conditioning frame
sharp and blur the frames after it, so SIFT cannot match frame 0 with the others
(docs/evaluation.md, "Camera accuracy in the tiny world").

:func:`wrong_trajectory_errors` is the reference a camera-following model must score clearly worse
on: the recovered cameras of each video against the other videos' requested trajectories.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from camvid.evaluation.pose_metrics import camera_errors
from camvid.evaluation.sfm import SfmOptions, run_sfm

__all__ = ["CAMERA_METRICS", "CameraAccuracyConfig", "VideoJob", "evaluate_video", "evaluate_camera_accuracy",
           "summarize_camera_results", "failed_video_result", "wrong_trajectory_errors"]

CAMERA_METRICS = ("RotErr", "TransErr", "CamMC")


@dataclass
class CameraAccuracyConfig:
    trials: int = 5
    base_seed: int = 0
    workers: int = 1
    cache_dir: str | None = None
    sfm: SfmOptions = field(default_factory=SfmOptions)
    progress: bool = True
    first_frame: int = 0  # frames before it are left out (module docstring)

    def __post_init__(self) -> None:
        if int(self.first_frame) != self.first_frame or self.first_frame < 0:
            raise ValueError(f"camera accuracy: first_frame must be a whole number >= 0, got {self.first_frame}")

    def seeds(self) -> list[int]:
        if self.trials < 1:
            raise ValueError(f"camera accuracy: trials must be >= 1, got {self.trials}")
        return [self.base_seed + i for i in range(self.trials)]


@dataclass
class VideoJob:
    """What one worker needs: the video file, the clip's pixel intrinsics and the GT poses."""

    sample_id: str
    video_path: str
    K: np.ndarray  # (3, 3) pixel intrinsics shared by the clip
    gt_c2w: np.ndarray  # (T, 4, 4), every frame of the video
    first_frame: int = 0  # SfM and the errors use frames first_frame..T-1


def evaluate_video(job: VideoJob, seeds: list[int], options: SfmOptions) -> dict:
    """All trials of one video -> a JSON-ready dict (per-trial results and the trial average)."""
    import pycolmap

    from camvid.evaluation.layout import read_video

    pycolmap.logging.minloglevel = 2  # keep workers quiet: one line per failed trial is enough
    frames = read_video(job.video_path)
    if len(frames) != len(job.gt_c2w):
        raise ValueError(
            f"{job.video_path}: {len(frames)} frames but {len(job.gt_c2w)} camera poses in cameras.txt"
        )
    if len(frames) - job.first_frame < 3:
        raise ValueError(f"{job.video_path}: camera accuracy from frame {job.first_frame} of {len(frames)} "
                         "leaves fewer than 3 frames for SfM")
    frames, gt_c2w = frames[job.first_frame:], np.asarray(job.gt_c2w)[job.first_frame:]
    trials = []
    for trial in run_sfm(frames, job.K, seeds, options):
        entry = {"seed": trial.seed, "success": trial.success, "registered": trial.num_registered,
                 "reason": trial.reason}
        if trial.success:
            entry.update(camera_errors(trial.c2w, gt_c2w))
            # the recovered path at full precision (requested-vs-recovered plots; per-frame errors that
            # sum to the entry's own: rounding would move near-zero rotation angles)
            entry["c2w"] = trial.c2w.tolist()
        trials.append(entry)
    ok = [t for t in trials if t["success"]]
    result = {"sample_id": job.sample_id, "num_frames": len(frames), "first_frame": job.first_frame,
              "trials": trials, "num_trials": len(trials), "num_success": len(ok)}
    for name in CAMERA_METRICS:
        result[name] = float(np.mean([t[name] for t in ok])) if ok else None
    return result


def failed_video_result(sample_id: str, trials: int, reason: str) -> dict:
    """The result of a video that could not be evaluated at all: every trial failed, for ``reason``."""
    result = {"sample_id": sample_id, "num_frames": 0, "num_trials": trials, "num_success": 0,
              "trials": [{"seed": None, "success": False, "registered": 0, "reason": reason}] * trials}
    result.update({name: None for name in CAMERA_METRICS})
    return result


def _evaluate_or_fail(job: VideoJob, seeds: list[int], options: SfmOptions) -> dict:
    """:func:`evaluate_video`, but one video's error (an unreadable file, an SfM crash) is that video's
    failure, not the whole evaluation's; not cached, so a fixed file is evaluated next time.
    Programming errors (AssertionError, TypeError, ...) still propagate."""
    try:
        return evaluate_video(job, seeds, options)
    except (OSError, ValueError, RuntimeError) as err:
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:300]
        result = failed_video_result(job.sample_id, len(seeds), reason)
        result["error"] = True
        return result


def _cache_key(seeds: list[int], options: SfmOptions, job: VideoJob) -> str:
    blob = json.dumps({"seeds": seeds, "sfm": asdict(options), "video": os.path.abspath(job.video_path),
                       "mtime": os.path.getmtime(job.video_path), "K": np.round(job.K, 6).tolist(),
                       "first_frame": job.first_frame,
                       "gt": np.round(job.gt_c2w, 6).tolist()}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def _cached(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a half-written file from an interrupted run: recompute it
    return entry["result"] if entry.get("key") == key else None


def _store(path: Path, key: str, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=1))
    os.replace(tmp, path)


def summarize_camera_results(per_video: list[dict]) -> dict:
    """Mean errors over videos with at least one successful trial, and both failure rates."""
    ok = [v for v in per_video if v["num_success"] > 0]
    trials = sum(v["num_trials"] for v in per_video)
    failed = sum(v["num_trials"] - v["num_success"] for v in per_video)
    summary = {
        "num_videos": len(per_video),
        "num_videos_failed": len(per_video) - len(ok),
        "video_failure_rate": (len(per_video) - len(ok)) / len(per_video) if per_video else None,
        "num_trials": trials,
        "trial_failure_rate": failed / trials if trials else None,
    }
    for name in CAMERA_METRICS:
        summary[name] = float(np.mean([v[name] for v in ok])) if ok else None
    return summary


def wrong_trajectory_errors(per_video: list[dict], gt_c2w: dict[str, np.ndarray], max_others: int = 32) -> dict:
    """Each video's recovered cameras scored against other videos' requested trajectories.

    ``per_video``: :func:`evaluate_camera_accuracy`'s results (successful trials keep their ``c2w``,
    frames ``first_frame``..T-1); ``gt_c2w``: every video's requested (T, 4, 4) poses by sample id.
    For each video with a successful trial, its trials' errors against each of the next
    ``max_others`` videos (cyclic, in ``per_video`` order; all the others when there are fewer) of the
    same length that ``gt_c2w`` holds, averaged over the trials and those videos; then the mean over videos.
    Returns ``{metric: mean or None, "num_videos": n}``."""
    ids = [v["sample_id"] for v in per_video]
    means: dict[str, list[float]] = {name: [] for name in CAMERA_METRICS}
    for i, video in enumerate(per_video):
        ok = [t for t in video["trials"] if t["success"] and "c2w" in t]
        if not ok or video["sample_id"] not in gt_c2w:
            continue
        first = int(video.get("first_frame", 0))
        own_len = len(gt_c2w[video["sample_id"]])
        others = [ids[(i + k) % len(ids)] for k in range(1, len(ids))]
        # videos without requested poses here (left out as unusable) are no reference
        others = [o for o in others if o in gt_c2w and len(gt_c2w[o]) == own_len][:max_others]
        if not others:
            continue
        errors = [camera_errors(np.asarray(t["c2w"]), np.asarray(gt_c2w[o])[first:]) for t in ok for o in others]
        for name in CAMERA_METRICS:
            means[name].append(float(np.mean([e[name] for e in errors])))
    n = len(means[CAMERA_METRICS[0]])
    return {**{name: (float(np.mean(v)) if v else None) for name, v in means.items()}, "num_videos": n}


def evaluate_camera_accuracy(jobs: list[VideoJob], config: CameraAccuracyConfig, tag: str = "video") -> dict:
    """Run every job (in parallel over videos), return ``{"summary": ..., "per_video": [...]}``.

    ``tag`` separates caches of different video kinds of one sample folder ("video", "gt").
    """
    seeds = config.seeds()
    cache = Path(config.cache_dir) / tag if config.cache_dir else None
    results: dict[str, dict] = {}
    pending: list[tuple[VideoJob, str]] = []
    for job in jobs:
        if not os.path.isfile(job.video_path):
            results[job.sample_id] = failed_video_result(job.sample_id, len(seeds), f"{job.video_path}: missing")
            continue
        key = _cache_key(seeds, config.sfm, job)
        hit = _cached(cache / f"{job.sample_id}.json", key) if cache else None
        if hit is not None:
            results[job.sample_id] = hit
        else:
            pending.append((job, key))

    progress = None
    if config.progress and pending:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(pending), desc=f"camera accuracy ({tag})", unit="video")

    def finish(job: VideoJob, key: str, result: dict) -> None:
        results[job.sample_id] = result
        if cache and not result.get("error"):
            _store(cache / f"{job.sample_id}.json", key, result)
        if progress is not None:
            progress.update(1)

    if config.workers <= 1 or len(pending) <= 1:
        for job, key in pending:
            finish(job, key, _evaluate_or_fail(job, seeds, config.sfm))
    else:
        # spawn: pycolmap and torch hold threads that a forked child must not inherit
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=config.workers, mp_context=context) as pool:
            futures = {pool.submit(_evaluate_or_fail, job, seeds, config.sfm): (job, key) for job, key in pending}
            for future in as_completed(futures):
                job, key = futures[future]
                finish(job, key, future.result())
    if progress is not None:
        progress.close()
    per_video = [results[job.sample_id] for job in jobs]
    return {"summary": summarize_camera_results(per_video), "per_video": per_video}
