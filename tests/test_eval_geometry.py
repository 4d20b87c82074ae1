"""CVD geometry-consistency metrics: SuperGlue's AUC, epipolar distance, relative pose on a render."""

import math

import numpy as np
import pytest

from camvid.evaluation.geometry_consistency import (
    GeometryConsistencyConfig,
    estimate_relative_pose,
    pose_auc,
    rotation_angle_deg,
    summarize_pairs,
    symmetric_epipolar_distance,
    translation_angle_deg,
    video_pairs,
)
from camvid.evaluation.matching import Matches, mutual_ratio_matches


def test_pose_auc_hand_cases():
    # all errors zero: perfect recall everywhere
    assert pose_auc([0.0, 0.0]) == pytest.approx([1.0, 1.0, 1.0])
    # every estimate failed
    assert pose_auc([np.inf, np.inf]) == pytest.approx([0.0, 0.0, 0.0])
    # one pair at 0 deg, one failed: recall 1/2 from the start
    assert pose_auc([0.0, np.inf]) == pytest.approx([0.5, 0.5, 0.5])
    # a single error e: recall steps from 0 to 1 at e, area (t - e) / t (trapezoid from 0 at e ... )
    auc5, auc10, auc20 = pose_auc([2.5])
    # the trapezoid between (0, 0) and (2.5, 1) adds half a step: 1.25; then 1 * (t - 2.5)
    assert auc5 == pytest.approx((1.25 + 2.5) / 5)
    assert auc20 == pytest.approx((1.25 + 17.5) / 20)


def test_angles():
    c, s = math.cos(0.3), math.sin(0.3)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    assert rotation_angle_deg(R, np.eye(3)) == pytest.approx(math.degrees(0.3))
    # E fixes t up to sign: the opposite direction is no error
    assert translation_angle_deg(np.array([-1.0, 0, 0]), np.array([2.0, 0, 0])) == pytest.approx(0.0)
    assert translation_angle_deg(np.array([0, 1.0, 0]), np.array([1.0, 0, 0])) == pytest.approx(90.0)


def _two_view(rng, K, T01, n=200):
    X = rng.uniform([-2, -2, 4], [2, 2, 8], (n, 3))
    x0 = X @ K.T
    X1 = X @ T01[:3, :3].T + T01[:3, 3]
    x1 = X1 @ K.T
    return x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:]


def test_true_correspondences_lie_on_epipolar_lines_and_give_the_pose():
    rng = np.random.default_rng(0)
    K = np.array([[100.0, 0, 64], [0, 100.0, 64], [0, 0, 1]])
    c, s = math.cos(0.1), math.sin(0.1)
    T01 = np.eye(4)
    T01[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T01[:3, 3] = [0.5, 0.1, 0.0]
    p0, p1 = _two_view(rng, K, T01)
    assert symmetric_epipolar_distance(p0, p1, K, K, T01).max() < 1e-12
    wrong = p1 + rng.normal(0, 5.0, p1.shape)
    assert np.median(symmetric_epipolar_distance(p0, wrong, K, K, T01)) > 5e-4
    R, t = estimate_relative_pose(p0, p1, K, K, (128, 128))
    assert rotation_angle_deg(R, T01[:3, :3]) < 0.01
    assert translation_angle_deg(t, T01[:3, 3]) < 0.01


def test_mutual_ratio_matches():
    rng = np.random.default_rng(1)
    d0 = rng.normal(size=(20, 8)).astype(np.float32)
    perm = rng.permutation(20)
    d1 = d0[perm] + 0.01
    m = mutual_ratio_matches(d0, d1)
    assert len(m) == 20
    assert (perm[m[:, 1]] == m[:, 0]).all()
    assert mutual_ratio_matches(d0, d1[:0]).shape == (0, 2)


def test_video_pairs_on_a_rendered_clip_beat_shuffled_frames():
    from camvid.data.synthetic import default_intrinsics, make_scene, make_trajectory, render_frames

    H = W = 96
    K = default_intrinsics(H, W)
    c2w = make_trajectory("orbit", 6, 0)
    video, _ = render_frames(make_scene(0), K, c2w, H, W)
    Ks = np.broadcast_to(K, (6, 3, 3))
    config = GeometryConsistencyConfig()
    from camvid.evaluation.matching import SiftMatcher

    good = summarize_pairs(video_pairs(video, Ks, c2w, SiftMatcher(), config))
    order = np.array([0, 4, 2, 5, 1, 3])
    bad = summarize_pairs(video_pairs(video[order], Ks, c2w, SiftMatcher(), config))
    assert good["num_pairs"] == 5
    assert good["RotAUC@20"] > 60.0 and good["Precision"] > 70.0
    assert bad["RotAUC@5"] < good["RotAUC@5"]
    assert bad["Precision"] < good["Precision"]


def test_matches_with_no_keypoints_count_as_failed_pose():
    from camvid.evaluation.geometry_consistency import evaluate_pair

    def empty(image0, image1):
        z = np.zeros((0, 2))
        return Matches(z, z, np.zeros((0, 2), dtype=np.int64))

    img = np.zeros((32, 32, 3), np.uint8)
    T01 = np.eye(4)
    T01[0, 3] = 1.0
    res = evaluate_pair(img, img, np.eye(3), np.eye(3), T01, empty, GeometryConsistencyConfig())
    assert math.isinf(res["err_R"]) and res["precision"] == 0.0 and res["matching_score"] == 0.0
