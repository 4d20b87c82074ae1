"""CVD geometry consistency: relative poses from matches, SuperGlue's pose AUC, precision, matching score.

Protocol (CVD section 5 / table 1, after SuperGlue's evaluation):
- per video: image pairs (frame 0, frame t) for t >= 1; across videos of one scene: the frames of
  the same time index in two videos (pairs whose GT cameras coincide, such as the shared first
  frame of a folded pair, have no defined translation direction and are skipped);
- relative pose: essential matrix by LO-RANSAC on the matches with the GT intrinsics (pycolmap,
  1 px threshold as in SuperGlue), decomposed with the cheirality check;
- rotation error: angle of ``R_est R_gt^T``; translation error: angle between the translation
  directions, folded to [0, 90] deg because E fixes t only up to sign; a failed estimate counts
  as an infinite error;
- AUC of the cumulative error curve up to 5 / 10 / 20 degrees, pooled over all pairs;
- precision: share of matches whose symmetric epipolar distance (normalised image coordinates,
  squared, SuperGlue's definition) to the GT epipolar geometry is below 5e-4; matching score:
  correct matches over keypoints detected in the first image. Both averaged over pairs.
Numbers are reported in percent, as in the paper.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from camvid.evaluation.matching import Matcher

__all__ = [
    "AUC_THRESHOLDS",
    "GeometryConsistencyConfig",
    "pose_auc",
    "rotation_angle_deg",
    "translation_angle_deg",
    "symmetric_epipolar_distance",
    "estimate_relative_pose",
    "evaluate_pair",
    "video_pairs",
    "cross_video_pairs",
    "summarize_pairs",
]

AUC_THRESHOLDS = (5.0, 10.0, 20.0)


@dataclass
class GeometryConsistencyConfig:
    ransac_threshold_px: float = 1.0
    epipolar_threshold: float = 5e-4
    min_baseline: float = 1e-6  # GT camera centres closer than this: translation undefined, pair skipped
    ransac_seed: int = 0


def pose_auc(errors: np.ndarray, thresholds=AUC_THRESHOLDS) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, divided by the threshold."""
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    if len(errors) == 0:
        raise ValueError("pose_auc: no errors to summarise")
    recall = np.arange(1, len(errors) + 1) / len(errors)
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    aucs = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        r = np.concatenate([recall[:last], [recall[last - 1]]])
        e = np.concatenate([errors[:last], [t]])
        aucs.append(float(np.trapezoid(r, x=e) / t))
    return aucs


def rotation_angle_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    cos = (np.trace(R_est @ R_gt.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def translation_angle_deg(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    n = np.linalg.norm(t_est) * np.linalg.norm(t_gt)
    if n == 0:
        raise ValueError("translation_angle_deg: zero-length translation has no direction")
    angle = np.degrees(np.arccos(np.clip(np.dot(t_est, t_gt) / n, -1.0, 1.0)))
    return float(min(angle, 180.0 - angle))


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])


def symmetric_epipolar_distance(pts0: np.ndarray, pts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                                T_0to1: np.ndarray) -> np.ndarray:
    """SuperGlue's squared symmetric epipolar distance in normalised coordinates, per match."""
    def normalise(p: np.ndarray, K: np.ndarray) -> np.ndarray:
        x = (p - K[[0, 1], [2, 2]]) / K[[0, 1], [0, 1]]
        return np.concatenate([x, np.ones((len(x), 1))], axis=1)

    x0, x1 = normalise(pts0, K0), normalise(pts1, K1)
    E = _skew(T_0to1[:3, 3]) @ T_0to1[:3, :3]
    Ex0 = x0 @ E.T
    Etx1 = x1 @ E
    num = np.sum(x1 * Ex0, axis=1) ** 2
    return num * (1.0 / (Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2) + 1.0 / (Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2))


def _camera(K: np.ndarray, height: int, width: int):
    import pycolmap

    return pycolmap.Camera(model="PINHOLE", width=width, height=height,
                           params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])


def estimate_relative_pose(pts0: np.ndarray, pts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                           image_hw: tuple[int, int], threshold_px: float = 1.0,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """(R, t) of camera 1 from camera 0 (x1 = R x0 + t, unit t) or None when RANSAC fails."""
    import pycolmap

    if len(pts0) < 5:
        return None
    options = pycolmap.RANSACOptions()
    options.max_error = threshold_px
    options.random_seed = seed
    H, W = image_hw
    result = pycolmap.estimate_essential_matrix(
        np.asarray(pts0, np.float64), np.asarray(pts1, np.float64), _camera(K0, H, W), _camera(K1, H, W), options
    )
    if result is None:
        return None
    pose = result["cam2_from_cam1"]
    return pose.rotation.matrix(), np.asarray(pose.translation, dtype=np.float64)


def evaluate_pair(image0: np.ndarray, image1: np.ndarray, K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray,
                  matcher: Matcher, config: GeometryConsistencyConfig) -> dict:
    """Errors and match quality of one image pair; ``T_0to1`` maps camera-0 to camera-1 coordinates."""
    m = matcher(image0, image1)
    pts0, pts1 = m.points0, m.points1
    if len(pts0):
        correct = symmetric_epipolar_distance(pts0, pts1, K0, K1, T_0to1) < config.epipolar_threshold
    else:
        correct = np.zeros(0, dtype=bool)
    pose = estimate_relative_pose(pts0, pts1, K0, K1, image0.shape[:2], config.ransac_threshold_px,
                                  config.ransac_seed)
    if pose is None:
        err_R = err_t = float("inf")
    else:
        err_R = rotation_angle_deg(pose[0], T_0to1[:3, :3])
        err_t = translation_angle_deg(pose[1], T_0to1[:3, 3])
    return {
        "err_R": err_R,
        "err_t": err_t,
        "num_matches": int(len(pts0)),
        "precision": float(correct.mean()) if len(correct) else 0.0,
        "matching_score": float(correct.sum() / len(m.keypoints0)) if len(m.keypoints0) else 0.0,
    }


def _relative(c2w0: np.ndarray, c2w1: np.ndarray) -> np.ndarray:
    return np.linalg.inv(c2w1) @ c2w0


def video_pairs(video: np.ndarray, K: np.ndarray, c2w: np.ndarray, matcher: Matcher,
                config: GeometryConsistencyConfig) -> list[dict]:
    """Frame 0 against every later frame of one video."""
    out = []
    for t in range(1, len(video)):
        T01 = _relative(c2w[0], c2w[t])
        if np.linalg.norm(T01[:3, 3]) < config.min_baseline:
            continue
        out.append({"frames": (0, t), **evaluate_pair(video[0], video[t], K[0], K[t], T01, matcher, config)})
    return out


def cross_video_pairs(videos: list[np.ndarray], Ks: list[np.ndarray], c2ws: list[np.ndarray],
                      matcher: Matcher, config: GeometryConsistencyConfig) -> list[dict]:
    """Corresponding frames (same time index) of every two videos of one scene."""
    out = []
    for a, b in itertools.combinations(range(len(videos)), 2):
        if len(videos[a]) != len(videos[b]):
            raise ValueError(f"cross-video pairs: views {a} and {b} have {len(videos[a])} and "
                             f"{len(videos[b])} frames")
        for t in range(len(videos[a])):
            T01 = _relative(c2ws[a][t], c2ws[b][t])
            if np.linalg.norm(T01[:3, 3]) < config.min_baseline:
                continue
            res = evaluate_pair(videos[a][t], videos[b][t], Ks[a][t], Ks[b][t], T01, matcher, config)
            out.append({"views": (a, b), "frame": t, **res})
    return out


def summarize_pairs(pairs: list[dict]) -> dict:
    """Rotation / translation AUC at 5/10/20 deg, precision and matching score, in percent."""
    if not pairs:
        return {"num_pairs": 0}
    rot = pose_auc([p["err_R"] for p in pairs])
    trans = pose_auc([p["err_t"] for p in pairs])
    out = {"num_pairs": len(pairs), "pose_failure_rate": float(np.mean([np.isinf(p["err_R"]) for p in pairs]))}
    for t, r, tr in zip(AUC_THRESHOLDS, rot, trans):
        out[f"RotAUC@{t:g}"] = 100.0 * r
        out[f"TransAUC@{t:g}"] = 100.0 * tr
    out["Precision"] = 100.0 * float(np.mean([p["precision"] for p in pairs]))
    out["MatchingScore"] = 100.0 * float(np.mean([p["matching_score"] for p in pairs]))
    return out
