"""What is wrong with a pose file, and the command that converts it.

:func:`validate_pose_file` reads a file leniently (a bad line is a finding, not an exception) and
checks, in order: malformed lines and non-finite values, rotations that are not orthonormal or are
reflections, intrinsics that look like pixels rather than normalised values, non-square pixels
(given the image size, or from a pixel layout), timestamps, and the convention judged from the
motion:

- **pose direction**: the camera centres are computed under world-to-camera (``-R^T t``),
  camera-to-world (``t``) and a transposed rotation (``-R t``). A real camera path is smooth; a
  wrong reading mixes every frame's rotation into the centres, so rotation jitter (handheld video)
  or large world coordinates turn into jagged centres. The reading whose centres are clearly the
  smoothest (roughness = summed second differences over path length) is the guess. When the
  rotation barely changes, or the world origin sits at the cameras, all readings are alike and
  nothing is claimed.
- **camera axes**: a camera that moves steadily backwards along its viewing axis is what OpenGL /
  Blender / NeRF axes (z backward) look like when read as OpenCV (z forward) -- or a pull-back shot;
  the finding says both.

The report carries the best guess of the file's conventions and the ``data_prep/poses.py convert``
command that turns it into a standard RealEstate10K file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camvid.geometry.conventions import (
    AXES,
    DEFAULT_FPS,
    FORMATS,
    POSE_KINDS,
    decode_poses,
    encode_poses,
    guess_format,
    read_cameras,
    to_homogeneous,
)

__all__ = ["Finding", "ValidationReport", "validate_pose_file", "validate_poses", "path_roughness"]

ORTHONORMAL_TOL = 1e-3  # Frobenius norm of R R^T - I; %.9g files are ~1e-8 off
SQUARE_PIXEL_TOL = 0.01  # relative difference of fx * W and fy * H
_ROUGH_MARGIN = 4.0  # the guess must be this many times smoother than the declared reading
_ROUGH_MIN = 0.15  # ... and the declared reading at least this rough


@dataclass
class Finding:
    level: str  # "error" (the data is broken), "warning" (likely a convention mix-up), "info"
    code: str
    message: str
    frames: list[int] = field(default_factory=list)

    def line(self) -> str:
        where = ""
        if self.frames:
            shown = ", ".join(str(f) for f in self.frames[:8]) + (", ..." if len(self.frames) > 8 else "")
            where = f" (frames {shown})"
        return f"{self.level.upper()} [{self.code}] {self.message}{where}"


@dataclass
class ValidationReport:
    source: str
    findings: list[Finding]
    declared: dict  # the conventions the file was read with
    guess: dict  # the most likely conventions of the file
    command: str | None  # converts the file to a standard RealEstate10K pose file

    @property
    def ok(self) -> bool:
        return not any(f.level in ("error", "warning") for f in self.findings)

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def format(self) -> str:
        lines = [f"{self.source}: read as " + ", ".join(f"{k}={v}" for k, v in self.declared.items() if v is not None)]
        if not self.findings:
            lines.append("OK: no problems found")
        lines += ["  " + f.line() for f in self.findings]
        if self.guess != self.declared:
            lines.append("best guess: " + ", ".join(f"{k}={v}" for k, v in self.guess.items() if v is not None))
        if self.command:
            lines.append(f"convert with: {self.command}")
        return "\n".join(lines)


def path_roughness(centres: np.ndarray) -> float:
    """Summed second differences over path length; 0 for a straight constant-speed path."""
    c = np.asarray(centres, dtype=np.float64)
    if len(c) < 3:
        return 0.0
    length = np.linalg.norm(np.diff(c, axis=0), axis=-1).sum()
    accel = np.linalg.norm(c[2:] - 2 * c[1:-1] + c[:-2], axis=-1).sum()
    scale = np.abs(c).max() if c.size else 0.0
    return float(accel / (length + 1e-9 + 1e-6 * scale))


def _centre_readings(stored: np.ndarray) -> dict[str, np.ndarray]:
    A, b = stored[:, :3, :3], stored[:, :3, 3]
    return {
        "w2c": -np.einsum("tji,tj->ti", A, b),  # -A^T b
        "c2w": b.copy(),
        "w2c_transposed": -np.einsum("tij,tj->ti", A, b),  # -A b: the rotation was written transposed
    }


def _frame_list(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.nonzero(mask)[0]]


def _lenient_re10k(path: Path) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, list[Finding], bool]:
    """URL, timestamps, intrinsics, stored 3x4 matrices; bad lines become findings."""
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    findings: list[Finding] = []
    if not lines:
        return "", np.zeros(0), np.zeros((0, 4)), np.zeros((0, 3, 4)), [
            Finding("error", "empty", "empty file (expected a URL line, then one line per frame)")], False
    ts, intr, mats, bad = [], [], [], []
    matrix_like = 0
    for lineno, row in enumerate(lines[1:], start=2):
        parts = row.split()
        if len(parts) in (12, 16):
            matrix_like += 1
        if len(parts) != 19:
            bad.append(lineno)
            continue
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            bad.append(lineno)
            continue
        ts.append(nums[0])
        intr.append(nums[1:5])
        mats.append(np.reshape(nums[7:19], (3, 4)))
    if bad:
        findings.append(Finding("error", "malformed", f"{len(bad)} line(s) are not 19 numbers "
                                f"(timestamp fx fy cx cy 0 0 + 12 pose entries): lines {bad[:8]}"))
    first_is_pose = len(lines[0].split()) in (12, 16, 19) and all(_number(p) for p in lines[0].split())
    if first_is_pose:
        findings.append(Finding("warning", "no_url_line", "the first line holds numbers; RealEstate10K files start "
                                "with a URL (or any header) line, which is skipped"))
    n = len(ts)
    return (lines[0], np.asarray(ts), np.asarray(intr).reshape(n, 4), np.asarray(mats).reshape(n, 3, 4),
            findings, matrix_like > len(lines[1:]) // 2)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def validate_poses(stored, intrinsics=None, *, pose: str = "w2c", axes: str = "opencv",
                   intrinsics_kind: str | None = "normalized", size: tuple[int, int] | None = None,
                   timestamps=None) -> tuple[list[Finding], dict]:
    """Check poses as stored (any convention) -> findings and the guessed conventions.

    ``stored`` (T, 3|4, 4); ``intrinsics`` (T, 4) fx, fy, cx, cy as stored (``intrinsics_kind``
    normalised or pixel; None when the layout has none)."""
    findings: list[Finding] = []
    guess: dict = {"pose": pose, "axes": axes, "intrinsics": intrinsics_kind,
                   "size": None if size is None else f"{size[0]}x{size[1]}"}
    M = np.asarray(stored, dtype=np.float64)
    if M.ndim != 3 or M.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"poses must be (T, 3|4, 4), got {M.shape}")
    M = M[:, :3, :]
    T = len(M)
    K = None if intrinsics is None else np.asarray(intrinsics, dtype=np.float64).reshape(T, 4)

    finite = np.isfinite(M).reshape(T, -1).all(1)
    if K is not None:
        finite &= np.isfinite(K).all(1)
    if not finite.all():
        findings.append(Finding("error", "non_finite", "non-finite values (nan / inf) in the pose or intrinsics",
                                _frame_list(~finite)))
    good = np.nonzero(finite)[0]
    M, K = M[good], (None if K is None else K[good])
    if len(M) == 0:
        return findings, guess

    R = M[:, :, :3]
    gram_err = np.linalg.norm(R @ np.swapaxes(R, 1, 2) - np.eye(3), axis=(1, 2))
    det = np.linalg.det(R)
    bad_rot = gram_err > ORTHONORMAL_TOL
    if bad_rot.any():
        norms = np.linalg.norm(R[bad_rot], axis=1)  # column norms
        uniform = np.allclose(norms, norms[:, :1], rtol=1e-3)
        hint = (f"; its columns all have length {norms[0, 0]:.4g}: a scale was folded into the rotation"
                if uniform else "; the matrix is not a rotation (wrong layout, or a projection K[R|t]?)")
        findings.append(Finding("error", "not_orthonormal", f"rotation is not orthonormal (|R R^T - I| up to "
                                f"{gram_err.max():.3g}){hint}", [int(good[i]) for i in np.nonzero(bad_rot)[0]]))
    reflect = (det < 0) & ~bad_rot
    if reflect.any():
        findings.append(Finding("error", "reflection", "rotation has determinant -1 (a reflection): one axis is "
                                "flipped, e.g. a left-handed y-up / z-forward mix", [int(good[i]) for i in np.nonzero(reflect)[0]]))

    if K is not None:
        _check_intrinsics(K, good, intrinsics_kind, size, findings, guess)

    if timestamps is not None:
        ts = np.asarray(timestamps, dtype=np.float64)[good]
        if len(ts) > 1 and not (np.diff(ts) > 0).all():
            findings.append(Finding("warning", "timestamps", "timestamps are not strictly increasing (frames out of "
                                    "order, or indices instead of microseconds?)",
                                    [int(good[i + 1]) for i in np.nonzero(np.diff(ts) <= 0)[0]]))

    if not bad_rot.any() and not reflect.any() and len(M) >= 3:
        _check_motion(M, pose, axes, findings, guess)
    return findings, guess


def _check_intrinsics(K: np.ndarray, good: np.ndarray, kind: str | None, size, findings: list[Finding],
                      guess: dict) -> None:
    fx, fy, cx, cy = K.T
    if (fx <= 0).any() or (fy <= 0).any():
        findings.append(Finding("error", "focal", "focal lengths must be positive",
                                [int(good[i]) for i in np.nonzero((fx <= 0) | (fy <= 0))[0]]))
        return
    if kind == "normalized" and (np.median(cx) > 2.0 or np.median(cy) > 2.0):
        w, h = round(2 * float(np.median(cx))), round(2 * float(np.median(cy)))
        findings.append(Finding("warning", "pixel_intrinsics", f"intrinsics look like pixels, not values normalised "
                                f"by the image size (cx = {np.median(cx):.4g}); with a central principal point the "
                                f"image is about {w}x{h}"))
        guess["intrinsics"] = "pixel"
        guess["size"] = guess["size"] or f"{w}x{h}"
        return
    if kind == "pixel" or size is not None:
        if kind == "pixel":
            px, py = fx, fy
        else:
            px, py = fx * size[0], fy * size[1]
        ratio = px / py
        off = np.abs(ratio - 1) > SQUARE_PIXEL_TOL
        if off.any():
            where = f" at {size[0]}x{size[1]}" if size else ""
            findings.append(Finding("warning", "non_square_pixels", f"pixels are not square{where}: fx/fy in pixels = "
                                    f"{np.median(ratio):.4g} (camvid and both papers assume square pixels; a wrong "
                                    "image size, or intrinsics normalised by the wrong side?)",
                                    [int(good[i]) for i in np.nonzero(off)[0]]))
    elif kind == "normalized":
        aspect = float(np.median(fy / fx))
        findings.append(Finding("info", "implied_aspect", f"with square pixels the source frames are {aspect:.4g}:1 "
                                "(width:height); give --size WxH to check the pixels"))
    if kind == "normalized" and (np.abs(cx - 0.5) > 0.25).any() | (np.abs(cy - 0.5) > 0.25).any():
        findings.append(Finding("warning", "principal_point", "principal point far from the image centre "
                                f"(cx = {np.median(cx):.3g}, cy = {np.median(cy):.3g} of the width / height)"))


def _check_motion(M: np.ndarray, pose: str, axes: str, findings: list[Finding], guess: dict) -> None:
    readings = _centre_readings(M)
    rough = {k: path_roughness(c) for k, c in readings.items()}
    declared = pose  # "w2c" or "c2w"
    best = min(rough, key=rough.get)
    if best != declared and rough[declared] > _ROUGH_MIN and rough[best] * _ROUGH_MARGIN < rough[declared]:
        if best == "w2c_transposed":
            findings.append(Finding("warning", "likely_transposed", "camera centres are jagged as stored but smooth "
                                    "with the rotation transposed: the rotation is likely camera-to-world while the "
                                    f"translation is world-to-camera (roughness {rough[declared]:.3g} vs "
                                    f"{rough[best]:.3g})"))
            guess["pose"] = "w2c_transposed"
        else:
            findings.append(Finding("warning", "likely_inverted", f"camera centres are jagged read as {declared} but "
                                    f"smooth read as {best}: the file is likely {best} "
                                    f"(roughness {rough[declared]:.3g} vs {rough[best]:.3g})"))
            guess["pose"] = best
    elif (np.abs(M[:, :, 3]) < 1e-12).all():
        findings.append(Finding("info", "zero_translation", "every translation is zero: a rotation in place, or a "
                                "4x4 matrix written column-major (which drops the translation)"))
    pose_read = guess["pose"] if guess["pose"] in POSE_KINDS else declared
    c2w = np.linalg.inv(decode_poses(M, pose_read, axes))
    steps = np.diff(c2w[:, :3, 3], axis=0)
    moving = np.linalg.norm(steps, axis=-1) > 1e-9 * max(1.0, np.abs(c2w[:, :3, 3]).max())
    if moving.sum() >= 2:
        local = np.einsum("tji,tj->ti", c2w[:-1, :3, :3][moving], steps[moving])  # motion in camera axes
        along = local[:, 2] / np.linalg.norm(local, axis=-1)
        if np.median(along) < -0.8:
            other = AXES[1 - AXES.index(axes)]
            findings.append(Finding("warning", "likely_other_axes", f"the camera moves backwards along its viewing "
                                    f"axis in every step: a pull-back shot, or {other} camera axes read as {axes} "
                                    "(OpenGL / Blender / NeRF cameras look down -z)"))
            guess["axes"] = other


def _convert_command(source: str, fmt: str, guess: dict, declared: dict) -> str | None:
    flags = [f"--from {fmt}"]
    if guess["pose"] != declared["pose"] and fmt in ("re10k", "matrices"):
        flags.append(f"--in-pose {guess['pose']}")
    if guess["axes"] != declared["axes"] and fmt in ("re10k", "matrices"):
        flags.append(f"--in-axes {guess['axes']}")
    if fmt == "re10k" and guess.get("intrinsics") == "pixel":
        flags.append("--in-intrinsics pixel")
    if guess.get("size") and (fmt == "matrices" or guess.get("intrinsics") == "pixel"):
        flags.append(f"--size {guess['size']}")
    if fmt == "re10k" and len(flags) == 1:
        return None
    out = str(Path(source).with_suffix("")) + "_re10k.txt"
    return f"python data_prep/poses.py convert {source} {out} " + " ".join(flags)


def validate_pose_file(path: str | Path, fmt: str | None = None, *, pose: str | None = None,
                       axes: str | None = None, intrinsics: str = "normalized",
                       size: tuple[int, int] | None = None) -> ValidationReport:
    """Validate a pose file of any supported layout (guessed from the name when ``fmt`` is None)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pose file not found: {path}")
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    findings: list[Finding] = []
    timestamps = None
    if fmt == "re10k":
        _, timestamps, K, stored, findings, matrix_like = _lenient_re10k(path)
        if matrix_like:
            fmt = "matrices"
            findings = [Finding("warning", "format", "lines hold 12 or 16 numbers: plain pose matrices (e.g. KITTI "
                                "odometry, camera-to-world), not the RealEstate10K layout")]
    if fmt == "re10k":
        declared = {"format": fmt, "pose": pose or "w2c", "axes": axes or "opencv", "intrinsics": intrinsics,
                    "size": None if size is None else f"{size[0]}x{size[1]}"}
        if len(stored) == 0:
            findings.append(Finding("error", "no_frames", "no readable frame lines"))
            return ValidationReport(str(path), findings, declared, dict(declared), None)
        more, guess = validate_poses(stored, K, pose=declared["pose"], axes=declared["axes"],
                                     intrinsics_kind=intrinsics, size=size, timestamps=timestamps)
    else:
        native = {"colmap": ("w2c", "opencv"), "nerf": ("c2w", "opengl"), "matrices": ("c2w", "opencv")}[fmt]
        p, a = pose or native[0], axes or native[1]
        declared = {"format": fmt, "pose": p, "axes": a, "intrinsics": None if fmt == "matrices" else "pixel",
                    "size": None if size is None else f"{size[0]}x{size[1]}"}
        try:
            cams = read_cameras(path, fmt, pose=p, axes=a, size=size, fps=DEFAULT_FPS)
        except (ValueError, FileNotFoundError) as err:
            findings.append(Finding("error", "unreadable", str(err)))
            return ValidationReport(str(path), findings, declared, dict(declared), None)
        stored = encode_poses(cams.track.w2c, p, a)
        K = None
        if fmt != "matrices":
            K = cams.track.intrinsics * np.array([cams.width, cams.height, cams.width, cams.height])
        findings += [Finding("info", "dropped", n) for n in cams.notes]
        more, guess = validate_poses(to_homogeneous(stored), K, pose=p, axes=a, intrinsics_kind=declared["intrinsics"],
                                     size=size, timestamps=cams.track.timestamps)
        guess["intrinsics"] = declared["intrinsics"]
    findings += more
    guess = {"format": fmt, **guess}
    command = None if any(f.level == "error" for f in findings) else _convert_command(str(path), fmt, guess, declared)
    return ValidationReport(str(path), findings, declared, guess, command)
