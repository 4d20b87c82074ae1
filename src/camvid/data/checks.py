"""Sample validity shared by the shard writer and the readers: the exception a sample that must not
train raises (with its skip reason), and the pose-row checks every clip's camera track passes."""

from __future__ import annotations

import numpy as np

from camvid.geometry.cameras import CameraTrack

__all__ = ["BadSample", "ClipTooShort", "check_track", "ROTATION_TOLERANCE"]


class BadSample(ValueError):
    """A sample that must not train; ``reason`` is a key of :data:`camvid.data.health.SKIP_REASONS`."""

    reason = "other"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ClipTooShort(BadSample):
    """The clip has fewer frames than the requested window needs."""

    reason = "too_short"


_F32_MAX = float(np.finfo(np.float32).max)
ROTATION_TOLERANCE = 1e-3  # max |R R^T - I|; RealEstate10K prints poses with 9 significant digits


def check_track(track: CameraTrack, source: str) -> CameraTrack:
    """Reject pose rows that would break training later, naming ``source:line``: values that
    overflow float32 (1e305 is finite in float64, inf in float32), rotations that are not
    orthonormal with det +1 (zero rows included), non-positive focal lengths."""
    rows = np.concatenate([track.intrinsics, track.w2c.reshape(len(track), 12)], axis=1)
    R = track.w2c[:, :, :3]
    with np.errstate(all="ignore"):
        overflow = ~(np.abs(rows) <= _F32_MAX).all(axis=1)  # also catches NaN
        ortho = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
        det = np.linalg.det(np.where(overflow[:, None, None], 0.0, R))
    problems = [
        (overflow, "a value is not finite in float32"),
        (~(ortho <= ROTATION_TOLERANCE), "rotation is not orthonormal (|R R^T - I| > 1e-3)"),
        (~(det > 0), "rotation has determinant <= 0 (zero or reflected)"),
        (~((track.intrinsics[:, :2] > 0).all(axis=1)), "focal length <= 0"),
    ]
    for mask, what in problems:
        if mask.any():
            row = int(np.argmax(mask))
            raise BadSample(f"{source}:{row + 2}: invalid pose row: {what}", "bad_pose")
    return track
