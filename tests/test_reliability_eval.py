"""Evaluation never aborts on one video: broken videos are counted as failed, named with the reason,
and the run finishes; only a folder without a single usable video is an error."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from camvid.evaluation.layout import write_sample, write_video
from camvid.evaluation.pipeline import run_evaluation

H = W = 96
T = 6


def _scene_video(kind: str):
    from camvid.data.synthetic import default_intrinsics, make_scene, make_trajectory, render_frames

    K = default_intrinsics(H, W)
    c2w = make_trajectory(kind, T, 1)
    c2w = np.linalg.inv(c2w[0])[None] @ c2w
    video, _ = render_frames(make_scene(3), K, c2w, H, W)
    return video, K, c2w


@pytest.fixture(scope="module")
def mixed_samples(tmp_path_factory):
    """Two good samples and four broken ones: zero-byte, one-frame, too few frames, undecodable bytes;
    plus a good sample whose gt.mp4 is empty."""
    root = tmp_path_factory.mktemp("mixed")
    video, K, c2w = _scene_video("orbit")
    for sid in ("good_a", "good_b", "zero_byte", "one_frame", "short", "garbage", "bad_gt"):
        write_sample(root, sid, video, K, c2w, "a room", 0, gt_video=video)
    (root / "zero_byte" / "video.mp4").write_bytes(b"")
    write_video(root / "one_frame" / "video.mp4", video[:1])
    write_video(root / "short" / "video.mp4", video[:4])
    (root / "garbage" / "video.mp4").write_bytes(b"\x00not an mp4" * 100)
    (root / "bad_gt" / "gt.mp4").write_bytes(b"")
    return root


def _cfg(samples, out, metrics):
    return {"samples_dir": str(samples), "out_dir": str(out), "device": "cpu", "reference": True,
            "metrics": metrics, "camera": {"trials": 1, "progress": False, "cache": False},
            "geometry": {"matcher": {"_target_": "camvid.evaluation.matching.SiftMatcher", "max_num_features": 512}},
            "weights": {"i3d_videogpt": None, "i3d_stylegan": None, "fid_inception": None, "clip": None}}


def test_broken_videos_are_counted_named_and_the_run_finishes(mixed_samples, tmp_path):
    result = run_evaluation(_cfg(mixed_samples, tmp_path, ["camera", "geometry", "fvd"]))
    rows = {r.metric: r for r in result["rows"]}
    # the three good generated videos are scored; the four broken ones count as failed videos
    assert rows["RotErr"].value is not None and rows["Precision"].value is not None
    assert rows["CameraVideoFailureRate"].value == pytest.approx(4 / 7)
    assert "4/7 videos" in rows["CameraVideoFailureRate"].note
    assert rows["UnusableVideos"].value == 4
    with (tmp_path / "camera_per_video.csv").open() as f:
        per_video = {r["sample_id"]: r for r in csv.DictReader(f)}
    assert set(per_video) == {"good_a", "good_b", "zero_byte", "one_frame", "short", "garbage", "bad_gt"}
    assert "empty file (0 bytes)" in per_video["zero_byte"]["failures"]
    assert "1 frame" in per_video["one_frame"]["failures"]
    assert "4 frames but 6 camera poses" in per_video["short"]["failures"]
    assert "unreadable" in per_video["garbage"]["failures"]
    assert per_video["good_a"]["trials_ok"] == "1" and per_video["zero_byte"]["trials_ok"] == "0"
    # an unusable gt.mp4 only removes that sample's reference: its generated video is scored
    assert per_video["bad_gt"]["trials_ok"] == "1" and per_video["bad_gt"]["gt_trials_ok"] == ""
    assert per_video["good_a"]["gt_trials_ok"] == "1"
    with (tmp_path / "video_failures.csv").open() as f:
        failures = [(r["sample_id"], r["file"]) for r in csv.DictReader(f)]
    assert sorted(failures) == [("bad_gt", "gt.mp4"), ("garbage", "video.mp4"), ("one_frame", "video.mp4"),
                                ("short", "video.mp4"), ("zero_byte", "video.mp4")]
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["unusable_videos"]) == {"zero_byte", "one_frame", "short", "garbage"}
    assert "bad_gt" in data["unusable_gt_videos"]
    assert "UnusableVideos" in (tmp_path / "results.md").read_text()


def test_a_folder_without_a_usable_video_is_an_error(tmp_path):
    video, K, c2w = _scene_video("truck")
    for sid in ("a", "b"):
        write_sample(tmp_path / "s", sid, video, K, c2w, "", 0)
    (tmp_path / "s" / "a" / "video.mp4").write_bytes(b"")
    write_video(tmp_path / "s" / "b" / "video.mp4", video[:1])
    with pytest.raises(ValueError, match=r"no usable video among 2 samples(.|\n)*a: video.mp4: empty"):
        run_evaluation(_cfg(tmp_path / "s", tmp_path / "out", ["camera"]))


def test_a_video_that_fails_inside_the_camera_worker_is_a_failed_video(tmp_path):
    """Past the screening (e.g. a file replaced mid-run): the worker's error fails that video only."""
    from camvid.evaluation.camera_accuracy import CameraAccuracyConfig, VideoJob, evaluate_camera_accuracy

    video, K, c2w = _scene_video("orbit")
    write_video(tmp_path / "short.mp4", video[:3])
    jobs = [VideoJob("gone", str(tmp_path / "gone.mp4"), K, c2w),
            VideoJob("short", str(tmp_path / "short.mp4"), K, c2w)]
    config = CameraAccuracyConfig(trials=2, progress=False, cache_dir=str(tmp_path / "cache"))
    result = evaluate_camera_accuracy(jobs, config)
    assert result["summary"]["num_videos_failed"] == 2 and result["summary"]["trial_failure_rate"] == 1.0
    reasons = {v["sample_id"]: v["trials"][0]["reason"] for v in result["per_video"]}
    assert "gone.mp4: missing" in reasons["gone"] and "3 frames but 6 camera poses" in reasons["short"]
    assert not (tmp_path / "cache").exists(), "a failure from an error is not cached: a fixed file is retried"
