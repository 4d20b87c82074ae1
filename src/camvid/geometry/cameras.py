"""RealEstate10K camera files and the pose conventions every other module relies on.

Conventions (docs/conventions.md):
- A RealEstate10K pose file holds a URL line, then one line per frame:
  ``timestamp_us fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3``.
  Intrinsics are normalised by image width (fx, cx) and height (fy, cy); the 3x4 matrix is
  world-to-camera in OpenCV axes (x right, y down, z forward).
- Poses are made relative to a conditioning frame: ``c2w_rel = inv(c2w_cond) @ c2w_t``.
- Intrinsics in pixels follow the resize and centre crop applied to the frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CameraTrack",
    "read_pose_file",
    "parse_pose_lines",
    "write_pose_file",
    "format_pose_line",
    "normalized_to_pixel_intrinsics",
    "pixel_to_normalized_intrinsics",
    "resize_crop_intrinsics",
    "resize_crop_geometry",
    "invert_rigid",
    "invert_rigid_np",
    "resize_crop_factors",
    "w2c_to_c2w",
    "relative_poses",
    "validate_cameras",
]


@dataclass
class CameraTrack:
    """One clip's cameras as stored in a RealEstate10K pose file."""

    url: str
    timestamps: np.ndarray  # (T,) int64 microseconds
    intrinsics: np.ndarray  # (T, 4) fx, fy, cx, cy normalised by width / height
    w2c: np.ndarray  # (T, 3, 4) world-to-camera, OpenCV axes

    def __len__(self) -> int:
        return len(self.timestamps)

    def c2w(self) -> np.ndarray:
        """(T, 4, 4) camera-to-world in float64."""
        return invert_rigid_np(self.w2c)

    def subset(self, indices) -> CameraTrack:
        idx = np.asarray(indices)
        return CameraTrack(self.url, self.timestamps[idx], self.intrinsics[idx], self.w2c[idx])


def _pose_rows_fast(rows: list[str]) -> np.ndarray | None:
    """(N, 19) float64 through numpy's C parser, or None when any row is unusual (a blank line,
    which loadtxt would skip, a wrong column count, text that is not a number): the checked parser
    then finds and names the line."""
    if not all(rows):
        return None
    try:
        arr = np.loadtxt(rows, dtype=np.float64, comments=None, ndmin=2)
    except ValueError:
        return None
    return arr if arr.shape == (len(rows), 19) else None


def _pose_rows_checked(rows: list[str], source: str) -> np.ndarray:
    values = []
    for lineno, row in enumerate(rows, start=2):
        parts = row.split()
        if len(parts) != 19:
            raise ValueError(
                f"{source}:{lineno}: malformed pose line: expected 19 numbers "
                f"(timestamp fx fy cx cy 0 0 + 12 world-to-camera entries), got {len(parts)}"
            )
        try:
            values.append([float(p) for p in parts])
        except ValueError as err:
            raise ValueError(f"{source}:{lineno}: malformed pose line: {err}") from None
    return np.asarray(values, dtype=np.float64)


def parse_pose_lines(lines: list[str], source: str = "<pose lines>") -> CameraTrack:
    """Parse the text of a RealEstate10K pose file; errors name ``source`` and the line number
    (the first bad line: wrong number of fields, not a number, non-finite, focal length <= 0)."""
    lines = [ln.strip() for ln in lines]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"{source}: empty pose file (expected a URL line, then one line per frame)")
    url, rows = lines[0], lines[1:]
    if not rows:
        raise ValueError(f"{source}: no frame lines after the URL line")
    # numpy's parser: a clip's pose file is parsed every time the loader draws the clip, and real
    # ones hold a few hundred lines
    arr = _pose_rows_fast(rows)
    if arr is None:
        arr = _pose_rows_checked(rows, source)
    problems = [(~np.isfinite(arr).all(axis=1), "non-finite value"),
                (~((arr[:, 1] > 0) & (arr[:, 2] > 0)), "focal lengths must be positive")]
    first = [(int(np.argmax(mask)), order) for order, (mask, _) in enumerate(problems) if mask.any()]
    if first:
        row, order = min(first)
        raise ValueError(f"{source}:{row + 2}: malformed pose line: {problems[order][1]}")
    timestamps = arr[:, 0].astype(np.int64)
    intrinsics = arr[:, 1:5]
    w2c = arr[:, 7:19].reshape(-1, 3, 4)
    return CameraTrack(url=url, timestamps=timestamps, intrinsics=intrinsics, w2c=w2c)


def read_pose_file(path: str | Path) -> CameraTrack:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose file not found: {path}")
    return parse_pose_lines(path.read_text().splitlines(), source=str(path))


def format_pose_line(timestamp: int, intrinsics, w2c) -> str:
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    m = np.asarray(w2c, dtype=np.float64).reshape(3, 4)
    nums = [fx, fy, cx, cy, 0.0, 0.0, *m.reshape(-1).tolist()]
    return f"{int(timestamp)} " + " ".join(f"{v:.9g}" for v in nums)


def write_pose_file(path: str | Path, track: CameraTrack) -> None:
    lines = [track.url] + [
        format_pose_line(ts, k, m) for ts, k, m in zip(track.timestamps, track.intrinsics, track.w2c)
    ]
    Path(path).write_text("\n".join(lines) + "\n")


def normalized_to_pixel_intrinsics(intrinsics: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(..., 4) normalised fx, fy, cx, cy -> (..., 3, 3) pixel K for an image of ``width x height``."""
    fx, fy, cx, cy = intrinsics.unbind(-1)
    K = torch.zeros(*intrinsics.shape[:-1], 3, 3, dtype=intrinsics.dtype, device=intrinsics.device)
    K[..., 0, 0] = fx * width
    K[..., 1, 1] = fy * height
    K[..., 0, 2] = cx * width
    K[..., 1, 2] = cy * height
    K[..., 2, 2] = 1.0
    return K


def pixel_to_normalized_intrinsics(K: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return torch.stack(
        [K[..., 0, 0] / width, K[..., 1, 1] / height, K[..., 0, 2] / width, K[..., 1, 2] / height], dim=-1
    )


def resize_crop_geometry(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[float, int, int]:
    """Scale factor and (top, left) crop offsets of a short-side resize followed by a centre crop.

    The image is scaled by ``s = max(out_h / src_h, out_w / src_w)`` (so it covers the output),
    resized to ``round(src * s)`` and centre-cropped. Returns ``(s, top, left)`` in resized pixels.
    """
    src_h, src_w = src_hw
    out_h, out_w = out_hw
    s = max(out_h / src_h, out_w / src_w)
    new_h, new_w = max(out_h, round(src_h * s)), max(out_w, round(src_w * s))
    return s, (new_h - out_h) // 2, (new_w - out_w) // 2


def resize_crop_factors(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[float, float, int, int]:
    """``(sx, sy, top, left)`` of :func:`resize_crop_geometry`: the exact per-axis scale
    ``new / src`` (what the resampler does) and the crop offsets."""
    src_h, src_w = src_hw
    out_h, out_w = out_hw
    s, top, left = resize_crop_geometry(src_hw, out_hw)
    new_h, new_w = max(out_h, round(src_h * s)), max(out_w, round(src_w * s))
    return new_w / src_w, new_h / src_h, top, left


def resize_crop_intrinsics(
    K: torch.Tensor, src_hw: tuple[int, int], out_hw: tuple[int, int]
) -> torch.Tensor:
    """Pixel intrinsics after :func:`resize_crop_geometry`.

    Scaling uses the exact per-axis factor ``new/src`` (what the resampler does), and the crop
    shifts the principal point. Pixel centres sit at +0.5, so a pure scale maps ``c -> c * s``.
    """
    sx, sy, top, left = resize_crop_factors(src_hw, out_hw)
    K = K.clone()
    K[..., 0, 0] = K[..., 0, 0] * sx
    K[..., 0, 2] = K[..., 0, 2] * sx - left
    K[..., 1, 1] = K[..., 1, 1] * sy
    K[..., 1, 2] = K[..., 1, 2] * sy - top
    return K


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 3|4, 4) rigid transforms, returned as (..., 4, 4)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    out = torch.zeros(*T.shape[:-2], 4, 4, dtype=T.dtype, device=T.device)
    Rt = R.transpose(-1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def invert_rigid_np(T: np.ndarray) -> np.ndarray:
    """:func:`invert_rigid` for numpy arrays (the loader builds each sample's cameras with numpy:
    a torch call per 4x4 costs more than the arithmetic)."""
    R = T[..., :3, :3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros((*T.shape[:-2], 4, 4), dtype=T.dtype)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ T[..., :3, 3:]
    out[..., 3, 3] = 1.0
    return out


def w2c_to_c2w(w2c: torch.Tensor) -> torch.Tensor:
    """(..., 3|4, 4) world-to-camera -> (..., 4, 4) camera-to-world."""
    return invert_rigid(w2c)


def relative_poses(c2w: torch.Tensor, index: int | torch.Tensor = 0) -> torch.Tensor:
    """Poses relative to frame ``index`` along dim -3: ``inv(c2w[index]) @ c2w[t]``.

    ``c2w`` is (..., T, 4, 4); ``index`` an int or a (...,) long tensor (one per clip).
    """
    if isinstance(index, int):
        ref = c2w[..., index : index + 1, :, :]
    else:
        idx = index.to(c2w.device).long().view(*index.shape, 1, 1, 1).expand(*index.shape, 1, 4, 4)
        ref = torch.gather(c2w, -3, idx)
    return invert_rigid(ref) @ c2w


def validate_cameras(K: torch.Tensor, c2w: torch.Tensor, what: str = "camera") -> None:
    """Raise ValueError naming the first bad frame: wrong shapes, non-finite values, singular K."""
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"{what}: intrinsics must have shape (..., 3, 3), got {tuple(K.shape)}")
    if c2w.shape[-2:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{what}: poses must have shape (..., 4, 4) or (..., 3, 4), got {tuple(c2w.shape)}")
    if K.shape[:-2] != c2w.shape[:-2]:
        raise ValueError(
            f"{what}: intrinsics {tuple(K.shape)} and poses {tuple(c2w.shape)} disagree on batch/frames"
        )
    lead = K.shape[:-2]
    bad_k = ~torch.isfinite(K).flatten(-2).all(-1)
    bad_p = ~torch.isfinite(c2w).flatten(-2).all(-1)
    det = K[..., 0, 0] * K[..., 1, 1]
    singular = torch.isfinite(det) & (det.abs() < 1e-12)
    for mask, problem in ((bad_k, "non-finite intrinsics"), (bad_p, "non-finite pose"), (singular, "singular intrinsics (zero focal length)")):
        if mask.any():
            first = tuple(int(i) for i in torch.nonzero(mask)[0].tolist()) if lead else ()
            raise ValueError(f"{what}: frame {first}: {problem}")
