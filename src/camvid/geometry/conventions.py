"""Camera conventions other tools use, converted to and from camvid's, and a pose-file validator.

camvid's canonical form is a :class:`~camvid.geometry.cameras.CameraTrack`: world-to-camera 3x4
matrices in OpenCV axes (x right, y down, z forward) and intrinsics normalised by the image width
(fx, cx) and height (fy, cy), i.e. a RealEstate10K pose file. Other layouts differ in three
independent choices plus the file layout:

- pose direction: world-to-camera (``w2c``: RealEstate10K, COLMAP) or camera-to-world (``c2w``:
  NeRF ``transforms.json``, Blender, most renderers);
- camera axes: ``opencv`` (x right, y down, z forward) or ``opengl`` (x right, y up, z backward:
  OpenGL, Blender, NeRF); the two differ by ``diag(1, -1, -1)`` on the camera side;
- intrinsics: ``normalized`` (by width / height) or ``pixel`` (needs the image size);
- layout: ``re10k`` (URL line + 19 numbers per frame), ``colmap`` (``cameras.txt`` +
  ``images.txt``, quaternion + translation, w2c OpenCV, pixel intrinsics), ``nerf``
  (``transforms.json``, c2w OpenGL 4x4 matrices, pixel intrinsics), ``matrices`` (one flattened
  3x4 or 4x4 pose per line, no intrinsics: KITTI-style trajectories).

Every reader returns :class:`Cameras` in the canonical form and every writer takes it, so any
layout converts to any other. Pure numpy (float64); no torch needed at this layer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camvid.geometry.cameras import CameraTrack, format_pose_line, parse_pose_lines

__all__ = [
    "POSE_KINDS",
    "AXES",
    "INTRINSICS_KINDS",
    "FORMATS",
    "OPENCV_TO_OPENGL",
    "Cameras",
    "to_homogeneous",
    "invert_poses",
    "c2w_to_w2c",
    "w2c_to_c2w",
    "swap_camera_axes",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "normalized_to_pixel",
    "pixel_to_normalized",
    "rotation_to_quaternion",
    "quaternion_to_rotation",
    "decode_poses",
    "encode_poses",
    "guess_format",
    "guess_format_for_output",
    "read_cameras",
    "write_cameras",
    "read_re10k",
    "write_re10k",
    "read_colmap",
    "write_colmap",
    "read_nerf",
    "write_nerf",
    "read_matrices",
    "write_matrices",
    "parse_size",
]

# "w2c_transposed": world-to-camera with the rotation written transposed (a common export slip that
# the validator detects from the motion); readable so that its convert command repairs the file.
POSE_KINDS = ("w2c", "c2w", "w2c_transposed")
AXES = ("opencv", "opengl")  # opengl == Blender == NeRF camera axes
INTRINSICS_KINDS = ("normalized", "pixel")
FORMATS = ("re10k", "colmap", "nerf", "matrices")

# Camera-side axis change OpenCV <-> OpenGL (its own inverse): c2w_gl = c2w_cv @ OPENCV_TO_OPENGL.
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
DEFAULT_FPS = 30.0


@dataclass
class Cameras:
    """Cameras of one clip in camvid's canonical form, plus what other layouts need.

    ``width`` / ``height`` (pixels) are needed to write pixel intrinsics; ``names`` are the image
    file names of layouts that store them (COLMAP, NeRF)."""

    track: CameraTrack
    width: int | None = None
    height: int | None = None
    names: list[str] | None = None
    notes: list[str] = field(default_factory=list)  # what a reader had to drop or assume

    def __len__(self) -> int:
        return len(self.track)

    def c2w(self) -> np.ndarray:
        return w2c_to_c2w(self.track.w2c)

    def size(self, what: str) -> tuple[int, int]:
        if self.width is None or self.height is None:
            raise ValueError(f"{what} stores pixel intrinsics: give the image size (--size WIDTHxHEIGHT)")
        return int(self.width), int(self.height)

    def frame_names(self) -> list[str]:
        # RealEstate10K frames are conventionally named by their timestamp, which lets a round trip
        # through COLMAP / NeRF layouts recover the timestamps from the names.
        return list(self.names) if self.names else [f"{int(t)}.png" for t in self.track.timestamps]


# --------------------------------------------------------------------------------------------
# matrix conventions


def to_homogeneous(m) -> np.ndarray:
    """(..., 3|4, 4) -> (..., 4, 4) float64 with a ``[0, 0, 0, 1]`` bottom row."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape[-2:] == (4, 4):
        return m.copy()
    if m.shape[-2:] != (3, 4):
        raise ValueError(f"poses must have shape (..., 3, 4) or (..., 4, 4), got {m.shape}")
    out = np.zeros((*m.shape[:-2], 4, 4))
    out[..., :3, :] = m
    out[..., 3, 3] = 1.0
    return out


def invert_poses(m) -> np.ndarray:
    """Inverse of rigid (..., 3|4, 4) transforms: ``[R | t]^-1 = [R^T | -R^T t]``."""
    m = to_homogeneous(m)
    R, t = m[..., :3, :3], m[..., :3, 3:]
    out = np.zeros_like(m)
    out[..., :3, :3] = np.swapaxes(R, -1, -2)
    out[..., :3, 3:] = -np.swapaxes(R, -1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def c2w_to_w2c(c2w) -> np.ndarray:
    return invert_poses(c2w)


def w2c_to_c2w(w2c) -> np.ndarray:
    return invert_poses(w2c)


def swap_camera_axes(c2w) -> np.ndarray:
    """OpenCV <-> OpenGL camera axes of camera-to-world poses (flip camera y and z)."""
    return to_homogeneous(c2w) @ OPENCV_TO_OPENGL


opencv_to_opengl = swap_camera_axes
opengl_to_opencv = swap_camera_axes


def normalized_to_pixel(intrinsics, width: int, height: int) -> np.ndarray:
    """(..., 4) normalised fx, fy, cx, cy -> pixel fx, fy, cx, cy for a ``width x height`` image."""
    return np.asarray(intrinsics, dtype=np.float64) * np.array([width, height, width, height], dtype=np.float64)


def pixel_to_normalized(intrinsics, width: int, height: int) -> np.ndarray:
    return np.asarray(intrinsics, dtype=np.float64) / np.array([width, height, width, height], dtype=np.float64)


def rotation_to_quaternion(R) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions ``(w, x, y, z)`` with ``w >= 0`` (COLMAP's order).

    Shepperd's method: the largest of the four squared components is taken first, so the result
    is accurate for every rotation (no division by a small number)."""
    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3)
    q = np.empty((len(flat), 4))
    for i, m in enumerate(flat):
        tr = m[0, 0] + m[1, 1] + m[2, 2]
        d = (tr, m[0, 0], m[1, 1], m[2, 2])
        k = int(np.argmax(d))
        if k == 0:
            s = 2.0 * math.sqrt(max(1.0 + tr, 0.0))
            q[i] = (0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s)
        elif k == 1:
            s = 2.0 * math.sqrt(max(1.0 + m[0, 0] - m[1, 1] - m[2, 2], 0.0))
            q[i] = ((m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s)
        elif k == 2:
            s = 2.0 * math.sqrt(max(1.0 - m[0, 0] + m[1, 1] - m[2, 2], 0.0))
            q[i] = ((m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s)
        else:
            s = 2.0 * math.sqrt(max(1.0 - m[0, 0] - m[1, 1] + m[2, 2], 0.0))
            q[i] = ((m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q[q[:, 0] < 0] *= -1.0
    return q.reshape(*R.shape[:-2], 4)


def quaternion_to_rotation(q) -> np.ndarray:
    """(..., 4) quaternions ``(w, x, y, z)`` (normalised here) -> (..., 3, 3) rotations."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _check_choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise ValueError(f"{option}={value!r}: expected one of {', '.join(allowed)}")
    return value


def decode_poses(stored, pose: str = "w2c", axes: str = "opencv") -> np.ndarray:
    """Poses as stored in some convention -> canonical (T, 4, 4) world-to-camera, OpenCV axes."""
    _check_choice(pose, POSE_KINDS, "pose")
    _check_choice(axes, AXES, "axes")
    m = to_homogeneous(stored)
    if pose == "w2c_transposed":
        m = m.copy()
        m[..., :3, :3] = np.swapaxes(m[..., :3, :3], -1, -2)
    c2w = m if pose == "c2w" else invert_poses(m)
    if axes == "opengl":
        c2w = swap_camera_axes(c2w)
    return invert_poses(c2w)


def encode_poses(w2c, pose: str = "w2c", axes: str = "opencv") -> np.ndarray:
    """Canonical world-to-camera OpenCV poses -> (T, 4, 4) in the requested convention."""
    _check_choice(pose, POSE_KINDS, "pose")
    _check_choice(axes, AXES, "axes")
    c2w = invert_poses(w2c)
    if axes == "opengl":
        c2w = swap_camera_axes(c2w)
    if pose == "c2w":
        return c2w
    w2c = invert_poses(c2w)
    if pose == "w2c_transposed":
        w2c[..., :3, :3] = np.swapaxes(w2c[..., :3, :3], -1, -2)
    return w2c


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"640x360"`` -> ``(640, 360)`` (width, height); None stays None."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ValueError(f"size={text!r}: expected WIDTHxHEIGHT in pixels, e.g. 640x360")
    return int(m.group(1)), int(m.group(2))


def _timestamps(n: int, fps: float) -> np.ndarray:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return np.round(np.arange(n) * 1e6 / fps).astype(np.int64)


def _timestamps_from_names(names: list[str], fps: float) -> np.ndarray:
    stems = [Path(n).stem for n in names]
    if all(s.isdigit() for s in stems) and len(set(stems)) == len(stems):
        ts = np.array([int(s) for s in stems], dtype=np.int64)
        if len(ts) < 2 or (np.diff(ts) > 1000).all():  # microsecond timestamps, not frame indices
            return ts
    return _timestamps(len(names), fps)


# --------------------------------------------------------------------------------------------
# RealEstate10K layout (in any pose / axes / intrinsics convention)


def read_re10k(path: str | Path, pose: str = "w2c", axes: str = "opencv", intrinsics: str = "normalized",
               size: tuple[int, int] | None = None) -> Cameras:
    """A RealEstate10K-layout file whose 12 pose numbers and 4 intrinsics follow the given conventions."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose file not found: {path}")
    _check_choice(intrinsics, INTRINSICS_KINDS, "intrinsics")
    # parse_pose_lines checks the focal lengths only for their sign, so pixel values parse unchanged
    track = parse_pose_lines(path.read_text().splitlines(), source=str(path))
    w2c = decode_poses(track.w2c, pose, axes)[:, :3, :]
    intr = track.intrinsics
    if intrinsics == "pixel":
        if size is None:
            raise ValueError(f"{path}: pixel intrinsics need the image size (--size WIDTHxHEIGHT)")
        intr = pixel_to_normalized(intr, *size)
    width, height = size if size else (None, None)
    return Cameras(CameraTrack(track.url, track.timestamps, intr, w2c), width, height)


def write_re10k(path: str | Path, cams: Cameras, pose: str = "w2c", axes: str = "opencv",
                intrinsics: str = "normalized") -> None:
    _check_choice(intrinsics, INTRINSICS_KINDS, "intrinsics")
    t = cams.track
    stored = encode_poses(t.w2c, pose, axes)[:, :3, :]
    intr = normalized_to_pixel(t.intrinsics, *cams.size("pixel intrinsics")) if intrinsics == "pixel" else t.intrinsics
    lines = [t.url or "camvid"] + [format_pose_line(ts, k, m) for ts, k, m in zip(t.timestamps, intr, stored)]
    Path(path).write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# COLMAP text model (cameras.txt + images.txt): w2c OpenCV, quaternion (w, x, y, z), pixels

# model -> (number of params, index of fx, fy, cx, cy in the params; fy None means fy = fx)
_COLMAP_MODELS = {
    "SIMPLE_PINHOLE": (3, 0, None, 1, 2),
    "PINHOLE": (4, 0, 1, 2, 3),
    "SIMPLE_RADIAL": (4, 0, None, 1, 2),
    "RADIAL": (5, 0, None, 1, 2),
    "OPENCV": (8, 0, 1, 2, 3),
    "FULL_OPENCV": (12, 0, 1, 2, 3),
}
_HEADER_TAG = "# camvid header: "


def _colmap_paths(path: Path) -> tuple[Path, Path]:
    folder = path if path.is_dir() else path.parent
    return folder / "cameras.txt", folder / "images.txt"


def _data_lines(path: Path) -> list[tuple[int, str]]:
    return [(i, ln) for i, ln in enumerate(path.read_text().splitlines(), start=1) if ln.strip() and not ln.startswith("#")]


def read_colmap(path: str | Path, fps: float = DEFAULT_FPS) -> Cameras:
    """COLMAP's text model (a folder, or its ``images.txt``); frames ordered by image name."""
    cameras_txt, images_txt = _colmap_paths(Path(path))
    for p in (cameras_txt, images_txt):
        if not p.is_file():
            raise FileNotFoundError(f"COLMAP text model: {p} not found (export one with `colmap model_converter "
                                    "--output_type TXT`)")
    cams: dict[int, tuple[np.ndarray, int, int]] = {}
    notes: list[str] = []
    for lineno, ln in _data_lines(cameras_txt):
        parts = ln.split()
        if len(parts) < 4 or parts[1] not in _COLMAP_MODELS:
            raise ValueError(f"{cameras_txt}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...' with MODEL "
                             f"one of {', '.join(_COLMAP_MODELS)}, got {ln.strip()!r}")
        n, ifx, ify, icx, icy = _COLMAP_MODELS[parts[1]]
        params = [float(v) for v in parts[4:]]
        if len(params) != n:
            raise ValueError(f"{cameras_txt}:{lineno}: {parts[1]} has {n} parameters, got {len(params)}")
        if any(abs(v) > 0 for v in params[max(ifx, icy) + 1 :]):
            notes.append(f"camera {parts[0]} ({parts[1]}): lens distortion dropped (camvid cameras are pinhole)")
        fx = params[ifx]
        fy = params[ify] if ify is not None else fx
        cams[int(parts[0])] = (np.array([fx, fy, params[icx], params[icy]]), int(parts[2]), int(parts[3]))
    header = ""
    for ln in images_txt.read_text().splitlines():
        if ln.startswith(_HEADER_TAG):
            header = ln[len(_HEADER_TAG):]
    rows = _data_lines(images_txt)
    entries = []
    # images.txt alternates a pose line and a (possibly empty, hence skipped above) 2-D point line;
    # a pose line is recognised by its 10 fields, the 8th being a known camera id.
    for lineno, ln in rows:
        parts = ln.split()
        if len(parts) != 10:
            continue
        try:
            qt = [float(v) for v in parts[1:8]]
            cam_id = int(parts[8])
        except ValueError:
            continue
        if cam_id not in cams:
            raise ValueError(f"{images_txt}:{lineno}: camera id {cam_id} is not in {cameras_txt}")
        entries.append((parts[9], qt, cam_id))
    if not entries:
        raise ValueError(f"{images_txt}: no image lines ('IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME')")
    entries.sort(key=lambda e: e[0])
    sizes = {cams[c][1:] for _, _, c in entries}
    if len(sizes) > 1:
        raise ValueError(f"{cameras_txt}: images of one clip must share a size, found {sorted(sizes)}")
    width, height = sizes.pop()
    w2c = np.zeros((len(entries), 3, 4))
    intr = np.zeros((len(entries), 4))
    for i, (_, qt, cam_id) in enumerate(entries):
        w2c[i, :, :3] = quaternion_to_rotation(np.array(qt[:4]))
        w2c[i, :, 3] = qt[4:]
        intr[i] = pixel_to_normalized(cams[cam_id][0], width, height)
    names = [e[0] for e in entries]
    track = CameraTrack(header, _timestamps_from_names(names, fps), intr, w2c)
    return Cameras(track, width, height, names, notes)


def write_colmap(path: str | Path, cams: Cameras) -> None:
    """``cameras.txt`` (PINHOLE, one camera per distinct intrinsics) + ``images.txt`` into a folder."""
    folder = Path(path)
    if folder.suffix == ".txt":
        folder = folder.parent
    folder.mkdir(parents=True, exist_ok=True)
    width, height = cams.size("COLMAP's cameras.txt")
    pix = normalized_to_pixel(cams.track.intrinsics, width, height)
    ids: dict[tuple[float, ...], int] = {}
    cam_of = []
    for k in pix:
        key = tuple(float(v) for v in k)
        ids.setdefault(key, len(ids) + 1)
        cam_of.append(ids[key])
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(ids)}"]
    cam_lines += [f"{i} PINHOLE {width} {height} " + " ".join(repr(v) for v in key) for key, i in ids.items()]
    (folder / "cameras.txt").write_text("\n".join(cam_lines) + "\n")
    q = rotation_to_quaternion(cams.track.w2c[:, :, :3])
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)",
                 f"# Number of images: {len(cams)}"]
    if cams.track.url:
        img_lines.append(_HEADER_TAG + cams.track.url)
    for i, name in enumerate(cams.frame_names()):
        vals = [*q[i], *cams.track.w2c[i, :, 3]]
        img_lines += [f"{i + 1} " + " ".join(repr(float(v)) for v in vals) + f" {cam_of[i]} {name}", ""]
    (folder / "images.txt").write_text("\n".join(img_lines) + "\n")


# --------------------------------------------------------------------------------------------
# NeRF-style transforms.json: c2w 4x4 in OpenGL axes, pixel intrinsics (global or per frame)


def read_nerf(path: str | Path, fps: float = DEFAULT_FPS) -> Cameras:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transforms file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not frames:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'frames' list (NeRF transforms.json)")

    def get(frame: dict, key: str):
        return frame.get(key, data.get(key))

    c2w, intr, names = [], [], []
    width = height = None
    for i, frame in enumerate(frames):
        if "transform_matrix" not in frame:
            raise ValueError(f"{path}: frames[{i}] has no 'transform_matrix'")
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if m.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"{path}: frames[{i}].transform_matrix must be 4x4, got {m.shape}")
        w, h = get(frame, "w"), get(frame, "h")
        if w is None or h is None:
            raise ValueError(f"{path}: frames[{i}]: the image size 'w' and 'h' is missing (needed for the intrinsics)")
        w, h = int(w), int(h)
        if width is not None and (w, h) != (width, height):
            raise ValueError(f"{path}: frames of one clip must share a size, found {width}x{height} and {w}x{h}")
        width, height = w, h
        fx, fy = get(frame, "fl_x"), get(frame, "fl_y")
        if fx is None:
            angle = get(frame, "camera_angle_x")
            if angle is None:
                raise ValueError(f"{path}: frames[{i}]: no focal length ('fl_x' or 'camera_angle_x')")
            fx = 0.5 * w / math.tan(0.5 * float(angle))
        if fy is None:
            angle_y = get(frame, "camera_angle_y")
            fy = 0.5 * h / math.tan(0.5 * float(angle_y)) if angle_y is not None else fx
        cx = get(frame, "cx")
        cy = get(frame, "cy")
        intr.append(pixel_to_normalized([fx, fy, w / 2 if cx is None else cx, h / 2 if cy is None else cy], w, h))
        c2w.append(m)
        names.append(str(frame.get("file_path", f"{i:05d}.png")))
    w2c = decode_poses(np.stack(c2w), "c2w", "opengl")[:, :3, :]
    track = CameraTrack(str(data.get("camvid_header", "")), _timestamps_from_names(names, fps), np.stack(intr), w2c)
    return Cameras(track, width, height, names)


def write_nerf(path: str | Path, cams: Cameras) -> None:
    """instant-ngp / nerfstudio-style ``transforms.json`` (per-frame intrinsics when they vary)."""
    width, height = cams.size("transforms.json")
    pix = normalized_to_pixel(cams.track.intrinsics, width, height)
    c2w = encode_poses(cams.track.w2c, "c2w", "opengl")
    shared = bool(np.all(pix == pix[0]))
    data: dict = {"w": width, "h": height}
    if shared:
        fx, fy, cx, cy = (float(v) for v in pix[0])
        data.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy, camera_angle_x=2 * math.atan(0.5 * width / fx),
                    camera_angle_y=2 * math.atan(0.5 * height / fy))
    if cams.track.url:
        data["camvid_header"] = cams.track.url
    frames = []
    for i, name in enumerate(cams.frame_names()):
        frame = {"file_path": name, "transform_matrix": c2w[i].tolist()}
        if not shared:
            frame.update(zip(("fl_x", "fl_y", "cx", "cy"), (float(v) for v in pix[i])))
        frames.append(frame)
    data["frames"] = frames
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# plain matrices: one flattened 3x4 or 4x4 pose per line (KITTI odometry: c2w 3x4, OpenCV)


def read_matrices(path: str | Path, pose: str = "c2w", axes: str = "opencv", fov_deg: float = 60.0,
                  size: tuple[int, int] | None = None, fps: float = DEFAULT_FPS) -> Cameras:
    """Poses without intrinsics; the intrinsics are a pinhole of horizontal field of view ``fov_deg``
    with square pixels (for the image ``size``, square if none is given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose file not found: {path}")
    rows = []
    for lineno, ln in enumerate(path.read_text().splitlines(), start=1):
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        parts = ln.replace(",", " ").split()
        if len(parts) not in (12, 16):
            raise ValueError(f"{path}:{lineno}: expected 12 (3x4) or 16 (4x4) numbers per line, got {len(parts)}")
        rows.append(to_homogeneous(np.array([float(v) for v in parts]).reshape(-1, 4)))
    if not rows:
        raise ValueError(f"{path}: no pose lines")
    if not 0 < fov_deg < 180:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    w, h = size if size else (1, 1)
    f = 0.5 * w / math.tan(math.radians(fov_deg) / 2)
    intr = np.tile(pixel_to_normalized([f, f, w / 2, h / 2], w, h), (len(rows), 1))
    w2c = decode_poses(np.stack(rows), pose, axes)[:, :3, :]
    track = CameraTrack("", _timestamps(len(rows), fps), intr, w2c)
    return Cameras(track, *(size or (None, None)), notes=[f"no intrinsics in {path.name}: {fov_deg:g} deg horizontal field of view assumed"])


def write_matrices(path: str | Path, cams: Cameras, pose: str = "c2w", axes: str = "opencv") -> None:
    stored = encode_poses(cams.track.w2c, pose, axes)[:, :3, :]
    Path(path).write_text("".join(" ".join(repr(float(v)) for v in m.reshape(-1)) + "\n" for m in stored))


# --------------------------------------------------------------------------------------------
# dispatch


def guess_format(path: str | Path) -> str:
    """The layout of ``path`` from its name and, for ``.txt``, its first data line."""
    path = Path(path)
    if path.is_dir() or path.name in ("images.txt", "cameras.txt"):
        return "colmap"
    if path.suffix.lower() == ".json":
        return "nerf"
    if path.is_file():
        for ln in path.read_text().splitlines()[:3]:
            n = len(ln.replace(",", " ").split())
            if n in (12, 16) and all(_is_number(v) for v in ln.replace(",", " ").split()):
                return "matrices"
    return "re10k"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_cameras(path: str | Path, fmt: str | None = None, *, pose: str | None = None, axes: str | None = None,
                 intrinsics: str = "normalized", size: tuple[int, int] | None = None, fov_deg: float = 60.0,
                 fps: float = DEFAULT_FPS) -> Cameras:
    """Read any supported layout into the canonical form. ``pose`` / ``axes`` override the layout's
    own convention (e.g. a RealEstate10K-layout file written in camera-to-world)."""
    fmt = _check_choice(fmt or guess_format(path), FORMATS, "format")
    if fmt == "re10k":
        cams = read_re10k(path, pose or "w2c", axes or "opencv", intrinsics, size)
    elif fmt == "colmap":
        cams = read_colmap(path, fps)
    elif fmt == "nerf":
        cams = read_nerf(path, fps)
    else:
        cams = read_matrices(path, pose or "c2w", axes or "opencv", fov_deg, size, fps)
    if fmt in ("colmap", "nerf") and (pose or axes):
        # the layout fixes its convention; an explicit override re-interprets the stored matrices
        stored = encode_poses(cams.track.w2c, *(("w2c", "opencv") if fmt == "colmap" else ("c2w", "opengl")))
        cams.track.w2c = decode_poses(stored, pose or ("w2c" if fmt == "colmap" else "c2w"),
                                      axes or ("opencv" if fmt == "colmap" else "opengl"))[:, :3, :]
    if size is not None and cams.width is None:
        cams.width, cams.height = size
    return cams


def write_cameras(path: str | Path, cams: Cameras, fmt: str | None = None, *, pose: str | None = None,
                  axes: str | None = None, intrinsics: str = "normalized") -> None:
    fmt = _check_choice(fmt or guess_format_for_output(path), FORMATS, "format")
    if fmt == "re10k":
        write_re10k(path, cams, pose or "w2c", axes or "opencv", intrinsics)
    elif fmt == "colmap":
        if pose or axes:
            raise ValueError("COLMAP's images.txt is always world-to-camera in OpenCV axes; drop --out-pose/--out-axes")
        write_colmap(path, cams)
    elif fmt == "nerf":
        if pose or axes:
            raise ValueError("transforms.json is always camera-to-world in OpenGL axes; drop --out-pose/--out-axes")
        write_nerf(path, cams)
    else:
        write_matrices(path, cams, pose or "c2w", axes or "opencv")


def guess_format_for_output(path: str | Path) -> str:
    path = Path(path)
    if path.suffix.lower() == ".json":
        return "nerf"
    if path.suffix == "" or path.name in ("images.txt", "cameras.txt"):
        return "colmap"
    return "re10k"
