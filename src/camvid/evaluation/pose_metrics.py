"""RotErr, TransErr and CamMC (CamI2V eqs. 10-12) on canonicalised camera-to-world poses.

Canonicalisation (CamI2V section 4 and its public evaluation code): every pose is made relative to
frame 0 (``inv(c2w_0) @ c2w_t``) and translations are divided by the distance of the camera furthest
from frame 0, each trajectory by its own furthest camera, so an SfM reconstruction at any scale
compares with the GT. Errors are summed over frames (frame 0 contributes zero by construction).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "canonicalize",
    "rotation_errors",
    "translation_errors",
    "cammc_errors",
    "camera_errors",
]

_EPS = 1e-9


def _check(c2w: np.ndarray, what: str) -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{what}: expected (T, 4, 4) camera-to-world poses, got {tuple(c2w.shape)}")
    if not np.isfinite(c2w).all():
        bad = int(np.nonzero(~np.isfinite(c2w).reshape(len(c2w), -1).all(1))[0][0])
        raise ValueError(f"{what}: frame {bad}: non-finite pose")
    if c2w.shape[1] == 3:
        c2w = np.concatenate([c2w, np.broadcast_to([[[0.0, 0.0, 0.0, 1.0]]], (len(c2w), 1, 4))], axis=1)
    return c2w


def canonicalize(c2w: np.ndarray) -> np.ndarray:
    """Poses relative to frame 0 with translations scaled so the furthest camera is at distance 1."""
    c2w = _check(c2w, "poses")
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    scale = np.linalg.norm(rel[:, :3, 3], axis=-1).max() + _EPS
    rel[:, :3, 3] /= scale
    return rel


def rotation_errors(est_R: np.ndarray, gt_R: np.ndarray) -> np.ndarray:
    """Per-frame geodesic angle ``acos((tr(R_est R_gt^T) - 1) / 2)`` in radians."""
    cos = (np.einsum("tij,tij->t", est_R, gt_R) - 1.0) / 2.0  # tr(A B^T) = sum_ij A_ij B_ij
    return np.arccos(np.clip(cos, -1.0, 1.0))


def translation_errors(est_t: np.ndarray, gt_t: np.ndarray) -> np.ndarray:
    return np.linalg.norm(est_t - gt_t, axis=-1)


def cammc_errors(est_c2w: np.ndarray, gt_c2w: np.ndarray) -> np.ndarray:
    """Per-frame L2 norm of the difference of the flattened 3x4 ``[R|t]``."""
    diff = est_c2w[:, :3, :4] - gt_c2w[:, :3, :4]
    return np.linalg.norm(diff.reshape(len(diff), -1), axis=-1)


def camera_errors(est_c2w: np.ndarray, gt_c2w: np.ndarray) -> dict[str, float]:
    """RotErr (radians), TransErr and CamMC summed over the frames of one trajectory."""
    est, gt = canonicalize(est_c2w), canonicalize(gt_c2w)
    if est.shape != gt.shape:
        raise ValueError(f"estimated poses {est.shape} and GT poses {gt.shape} differ in frame count")
    return {
        "RotErr": float(rotation_errors(est[:, :3, :3], gt[:, :3, :3]).sum()),
        "TransErr": float(translation_errors(est[:, :3, 3], gt[:, :3, 3]).sum()),
        "CamMC": float(cammc_errors(est, gt).sum()),
    }
