"""RotErr / TransErr / CamMC and the canonicalisation against hand-computed cases."""

import math

import numpy as np
import pytest

from camvid.evaluation.camera_accuracy import summarize_camera_results
from camvid.evaluation.pose_metrics import camera_errors, canonicalize


def _rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _pose(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def _trajectory(n: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    poses = []
    for i in range(n):
        R = _rot_z(0.05 * i + rng.normal(0, 0.01)) @ _rot_x(0.03 * i)
        poses.append(_pose(R, [0.1 * i, -0.02 * i, 0.05 * i * i]))
    return np.stack(poses)


def test_identical_trajectories_score_zero():
    gt = _trajectory()
    errs = camera_errors(gt, gt)
    assert errs == pytest.approx({"RotErr": 0.0, "TransErr": 0.0, "CamMC": 0.0}, abs=1e-6)


def test_rotation_of_theta_per_frame_sums_to_n_theta():
    theta, n = 0.1, 7
    gt = np.stack([np.eye(4)] * (n + 1))
    est = np.stack([np.eye(4)] + [_pose(_rot_z(theta), [0, 0, 0])] * n)
    errs = camera_errors(est, gt)
    assert errs["RotErr"] == pytest.approx(n * theta, rel=1e-6)
    assert errs["TransErr"] == pytest.approx(0.0, abs=1e-9)
    # CamMC: Frobenius norm of R(theta) - I is 2 sqrt(2) sin(theta / 2) per frame
    assert errs["CamMC"] == pytest.approx(n * 2 * math.sqrt(2) * math.sin(theta / 2), rel=1e-6)


def test_scaled_and_moved_trajectory_scores_zero():
    gt = _trajectory()
    est = gt.copy()
    est[:, :3, 3] *= 3.7  # SfM reconstructs at an arbitrary scale ...
    world = _pose(_rot_x(0.4) @ _rot_z(-1.1), [5.0, -2.0, 0.3])
    est = world[None] @ est  # ... in an arbitrary world frame
    errs = camera_errors(est, gt)
    assert errs == pytest.approx({"RotErr": 0.0, "TransErr": 0.0, "CamMC": 0.0}, abs=1e-6)


def test_translation_direction_error_hand_case():
    gt = np.stack([np.eye(4), _pose(np.eye(3), [1.0, 0, 0])])
    est = np.stack([np.eye(4), _pose(np.eye(3), [0, 2.0, 0])])
    errs = camera_errors(est, gt)
    assert errs["RotErr"] == pytest.approx(0.0, abs=1e-9)
    assert errs["TransErr"] == pytest.approx(math.sqrt(2), rel=1e-6)
    assert errs["CamMC"] == pytest.approx(math.sqrt(2), rel=1e-6)


def test_canonicalize_puts_furthest_camera_at_unit_distance():
    rel = canonicalize(_trajectory())
    np.testing.assert_allclose(rel[0], np.eye(4), atol=1e-12)
    assert np.linalg.norm(rel[:, :3, 3], axis=1).max() == pytest.approx(1.0, rel=1e-6)


def test_bad_poses_raise_naming_the_frame():
    gt = _trajectory(4)
    bad = gt.copy()
    bad[2, 0, 3] = np.nan
    with pytest.raises(ValueError, match="frame 2"):
        camera_errors(bad, gt)
    with pytest.raises(ValueError, match="frame count"):
        camera_errors(gt[:3], gt)


def test_summary_counts_failed_videos_instead_of_dropping_them():
    per_video = [
        {"num_trials": 5, "num_success": 5, "RotErr": 1.0, "TransErr": 2.0, "CamMC": 3.0},
        {"num_trials": 5, "num_success": 3, "RotErr": 3.0, "TransErr": 4.0, "CamMC": 5.0},
        {"num_trials": 5, "num_success": 0, "RotErr": None, "TransErr": None, "CamMC": None},
    ]
    s = summarize_camera_results(per_video)
    assert s["num_videos"] == 3 and s["num_videos_failed"] == 1
    assert s["video_failure_rate"] == pytest.approx(1 / 3)
    assert s["trial_failure_rate"] == pytest.approx(7 / 15)
    assert s["RotErr"] == pytest.approx(2.0) and s["CamMC"] == pytest.approx(4.0)
