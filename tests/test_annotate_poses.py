"""Pose annotation of a video: a synthetic render's cameras are recovered within the evaluation's
GT-reference tolerance; failed frames are reported with a reason, left out or interpolated (marked)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from camvid.evaluation import annotate
from camvid.evaluation.annotate import (
    AnnotateOptions,
    AnnotationFailed,
    annotate_frames,
    annotate_video,
    read_frames,
)
from camvid.evaluation.pose_metrics import camera_errors
from camvid.evaluation.sfm import SfmTrial
from camvid.geometry.cameras import read_pose_file

REPO = Path(__file__).resolve().parents[1]
H = W = 128
T = 16
BROKEN = (6, 10)  # source frames replaced by a flat grey picture (nothing for SIFT)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from camvid.data.synthetic import default_intrinsics, make_scene, make_trajectory, render_frames
    from camvid.evaluation.layout import write_video

    K = default_intrinsics(H, W)
    c2w = make_trajectory("forward", T, 0)
    video, _ = render_frames(make_scene(0), K, c2w, H, W)
    root = tmp_path_factory.mktemp("annotate")
    write_video(root / "clip.mp4", video, fps=8)
    broken = video.copy()
    broken[list(BROKEN)] = 128
    write_video(root / "broken.mp4", broken, fps=8)
    return {"root": root, "K": K, "c2w": c2w, "video": video}


def _given(K):
    return (K[0, 0] / W, K[1, 1] / H, K[0, 2] / W, K[1, 2] / H)


def test_recovers_the_rendered_cameras_and_reports_failed_frames(clip, tmp_path):
    """One SfM run (about 10 s): frames 6 and 10 are flat grey and fail; --interpolate fills them."""
    sys.path.insert(0, str(REPO / "data_prep"))
    import annotate_poses

    out = tmp_path / "broken.txt"
    fx, fy, cx, cy = _given(clip["K"])
    assert annotate_poses.main([str(clip["root"] / "broken.mp4"), "-o", str(out), "--stride", "2", "--intrinsics",
                                f"{fx},{fy},{cx},{cy}", "--interpolate"]) == 0
    track = read_pose_file(out)
    header = track.url
    assert "stride=2" in header and "scale=normalized" in header and "intrinsics=given" in header
    assert "failed=6,10" in header and "interpolated=6,10" in header and "registered=6/8" in header
    assert len(track) == 8
    np.testing.assert_array_equal(track.timestamps, np.arange(0, T, 2) * 125_000)
    np.testing.assert_allclose(track.c2w()[0], np.eye(4), atol=1e-6)  # relative to the first frame
    assert np.linalg.norm(track.c2w()[:, :3, 3], axis=-1).max() == pytest.approx(1.0, abs=1e-6)
    assert out.with_suffix(".png").is_file()
    # the registered frames against the true cameras: the evaluation's GT-reference tolerance
    # (tests/test_eval_camera.py: RotErr < 0.1, TransErr < 0.5 summed over 8 frames)
    keep = np.array([i not in BROKEN for i in range(0, T, 2)])
    errors = camera_errors(track.c2w()[keep], clip["c2w"][::2][keep])
    assert errors["RotErr"] < 0.1 and errors["TransErr"] < 0.5, errors
    # interpolated frames lie between their neighbours
    c = track.c2w()[:, :3, 3]
    np.testing.assert_allclose(c[3], (c[2] + c[4]) / 2, atol=1e-6)


@pytest.mark.slow
def test_estimated_intrinsics_recover_the_cameras(clip):
    from camvid.data.synthetic import make_trajectory

    c2w = make_trajectory("mixed", T, 0)
    from camvid.data.synthetic import make_scene, render_frames

    video, _ = render_frames(make_scene(0), clip["K"], c2w, H, W)
    result = annotate_frames(video[::2], np.arange(0, T, 2), 8.0, AnnotateOptions(stride=2))
    assert result.registered.all() and "intrinsics=estimated" in result.track.url
    assert result.K[0, 0] == pytest.approx(clip["K"][0, 0], rel=0.1)
    errors = camera_errors(result.track.c2w(), c2w[::2])
    assert errors["RotErr"] < 0.1 and errors["TransErr"] < 0.5, errors


def test_blank_video_fails_with_a_per_frame_report():
    frames = np.full((4, 64, 64, 3), 90, np.uint8)
    with pytest.raises(AnnotationFailed, match="registered 0 of 4") as info:
        annotate_frames(frames, options=AnnotateOptions(intrinsics=(1.0, 1.0, 0.5, 0.5)), source="blank")
    report = info.value.result.report()
    assert all(f"frame {i}: only 0 SIFT features (blurry" in report for i in range(4)), report


def test_too_short_video_is_refused_before_sfm(clip):
    with pytest.raises(ValueError, match="needs at least 3"):
        annotate_video(clip["root"] / "clip.mp4", AnnotateOptions(stride=8))


def test_read_frames_strides_and_downscales(clip, tmp_path):
    frames, idx, fps = read_frames(clip["root"] / "clip.mp4", stride=3, max_size=64)
    assert frames.shape == (6, 64, 64, 3) and idx.tolist() == [0, 3, 6, 9, 12, 15] and fps == pytest.approx(8)
    from PIL import Image

    for i in range(5):
        Image.fromarray(clip["video"][i]).save(tmp_path / f"{i:03d}.png")
    frames, idx, fps = read_frames(tmp_path, stride=2, max_frames=2, fps=24)
    assert frames.shape == (2, H, W, 3) and idx.tolist() == [0, 2] and fps == 24
    np.testing.assert_array_equal(frames[1], clip["video"][2])
    with pytest.raises(FileNotFoundError, match="not found"):
        read_frames(tmp_path / "missing.mp4")


def test_unregistered_frames_are_left_out_and_the_scale_option(monkeypatch):
    """The bookkeeping without SfM: a fake reconstruction at an arbitrary scale and world frame."""
    from camvid.data.synthetic import make_trajectory

    gt = make_trajectory("truck", 6, 1)
    world = np.eye(4)
    world[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    world[:3, 3] = [5, 1, -2]
    sfm_c2w = world @ gt
    sfm_c2w[:, :3, 3] *= 7.0  # SfM's arbitrary scale
    sfm_c2w[[0, 4]] = np.nan  # frames 0 and 4 did not register
    K = np.array([[50.0, 0, 32], [0, 50, 32], [0, 0, 1]])

    def fake_sfm(frames, K_in, seeds, options, work_dir=None):
        return [SfmTrial(seeds[0], False, 4, len(frames), reason="registered 4/6 frames", frame_c2w=sfm_c2w, K=K)]

    monkeypatch.setattr(annotate, "run_sfm", fake_sfm)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    res = annotate_frames(frames, np.arange(6) * 3, 30.0, AnnotateOptions(stride=3, scale="sfm"), source="x.mp4")
    assert len(res.track) == 4 and sorted(res.failures) == [0, 12]
    assert "failed=0,12" in res.track.url and "interpolated" not in res.track.url
    np.testing.assert_array_equal(res.track.timestamps, np.round(np.array([3, 6, 9, 15]) * 1e6 / 30))
    expected = np.linalg.inv(gt[1]) @ gt[[1, 2, 3, 5]]
    got = res.track.c2w()
    np.testing.assert_allclose(got[:, :3, :3], expected[:, :3, :3], atol=1e-9)
    np.testing.assert_allclose(got[:, :3, 3], 7.0 * expected[:, :3, 3], atol=1e-8)  # SfM's scale kept
    np.testing.assert_allclose(res.track.intrinsics[0], [50 / 64, 50 / 64, 0.5, 0.5])
    assert "left out" in res.report() and "frame 12:" in res.report()
    norm = annotate_frames(frames, None, 30.0, AnnotateOptions(), source="x.mp4")
    assert np.linalg.norm(norm.track.c2w()[:, :3, 3], axis=-1).max() == pytest.approx(1.0)
    filled = annotate_frames(frames, None, 30.0, AnnotateOptions(interpolate=True), source="x.mp4")
    assert len(filled.track) == 6 and "interpolated=0,4" in filled.track.url
    # frame 0 is held at frame 1's pose, so the path starts with two identical cameras
    np.testing.assert_allclose(filled.track.c2w()[1], np.eye(4), atol=1e-9)


def test_interpolate_poses_slerps_rotation_and_lerps_centres():
    from camvid.evaluation.annotate import interpolate_poses

    c2w = np.tile(np.eye(4), (3, 1, 1))
    a = 0.8
    c2w[2, :3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    c2w[2, :3, 3] = [2, 0, 4]
    out = interpolate_poses(c2w, np.array([True, False, True]))
    half = a / 2
    np.testing.assert_allclose(out[1, :3, :3], [[np.cos(half), 0, np.sin(half)], [0, 1, 0],
                                                [-np.sin(half), 0, np.cos(half)]], atol=1e-12)
    np.testing.assert_allclose(out[1, :3, 3], [1, 0, 2])
    with pytest.raises(ValueError, match="no known frame"):
        interpolate_poses(c2w, np.zeros(3, bool))
