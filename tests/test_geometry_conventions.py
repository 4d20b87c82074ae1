"""Convention converters (exact round trips through every layout) and the pose-file validator
(each corrupted variant of a good file is named, with a guess and a working convert command)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from camvid.geometry.cameras import CameraTrack, read_pose_file
from camvid.geometry.conventions import (
    Cameras,
    c2w_to_w2c,
    decode_poses,
    encode_poses,
    invert_poses,
    normalized_to_pixel,
    parse_size,
    pixel_to_normalized,
    quaternion_to_rotation,
    read_cameras,
    rotation_to_quaternion,
    swap_camera_axes,
    w2c_to_c2w,
    write_cameras,
)
from camvid.geometry.pose_validation import validate_pose_file

REPO = Path(__file__).resolve().parents[1]
W, H, T = 320, 180, 20


def _rot(v: np.ndarray) -> np.ndarray:
    th = np.linalg.norm(v)
    k = v / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * Kx + (1 - np.cos(th)) * Kx @ Kx


@pytest.fixture(scope="module")
def cams() -> Cameras:
    """A handheld-like forward move in SfM world coordinates (origin away from the cameras), 16:9."""
    from camvid.data.synthetic import make_trajectory

    rng = np.random.default_rng(0)
    c2w = make_trajectory("forward", T, 3)
    c2w[:, :3, 3] += [3.0, -0.5, 2.0]
    for t in range(T):  # a few tenths of a degree of rotation jitter, as in real video
        c2w[t, :3, :3] = c2w[t, :3, :3] @ _rot(rng.normal(size=3) * 0.004)
    f = 0.5 * W / np.tan(np.radians(30))
    intr = np.tile([f / W, f / H, 0.5, 0.5], (T, 1))
    intr[:, 2] += 0.01
    track = CameraTrack("https://www.youtube.com/watch?v=example", 1_000_000 + np.arange(T) * 33_367, intr,
                        invert_poses(c2w)[:, :3])
    return Cameras(track, W, H)


def _same(a: Cameras, b: Cameras, atol: float) -> None:
    np.testing.assert_allclose(a.track.w2c, b.track.w2c, atol=atol, rtol=0)
    np.testing.assert_allclose(a.track.intrinsics, b.track.intrinsics, atol=atol, rtol=0)
    np.testing.assert_array_equal(a.track.timestamps, b.track.timestamps)
    assert a.track.url == b.track.url


def test_matrix_conventions_are_exact_inverses():
    rng = np.random.default_rng(1)
    R = np.stack([_rot(rng.normal(size=3)) for _ in range(50)])
    m = np.tile(np.eye(4), (50, 1, 1))
    m[:, :3, :3], m[:, :3, 3] = R, rng.normal(size=(50, 3)) * 5
    np.testing.assert_allclose(w2c_to_c2w(c2w_to_w2c(m)), m, atol=1e-12)
    np.testing.assert_allclose(invert_poses(m) @ m, np.tile(np.eye(4), (50, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(swap_camera_axes(swap_camera_axes(m)), m, atol=0)
    # OpenGL camera looks down -z: the OpenCV forward axis is the negated OpenGL z axis
    np.testing.assert_allclose(swap_camera_axes(m)[:, :3, 2], -m[:, :3, 2])
    q = rotation_to_quaternion(R)
    np.testing.assert_allclose(quaternion_to_rotation(q), R, atol=1e-12)
    assert (q[:, 0] >= 0).all()
    # the near-180-degree rotations where a naive trace formula breaks
    flips = np.stack([np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])])
    np.testing.assert_allclose(quaternion_to_rotation(rotation_to_quaternion(flips)), flips, atol=1e-12)
    for pose in ("w2c", "c2w"):
        for axes in ("opencv", "opengl"):
            np.testing.assert_allclose(decode_poses(encode_poses(m, pose, axes), pose, axes), m, atol=1e-12)
    k = rng.uniform(0.2, 2, (7, 4))
    np.testing.assert_allclose(pixel_to_normalized(normalized_to_pixel(k, 640, 360), 640, 360), k, atol=1e-15)


@pytest.mark.parametrize("fmt,name,kw", [
    ("re10k", "std.txt", {}),
    ("re10k", "c2w_gl.txt", {"pose": "c2w", "axes": "opengl"}),
    ("re10k", "pixels.txt", {"intrinsics": "pixel"}),
    ("colmap", "colmap", {}),
    ("nerf", "transforms.json", {}),
])
def test_round_trip_through_every_layout(cams, tmp_path, fmt, name, kw):
    path = tmp_path / name
    write_cameras(path, cams, fmt, **kw)
    read_kw = dict(kw)
    back = read_cameras(path, fmt, size=(W, H) if kw.get("intrinsics") == "pixel" else None, **read_kw)
    # RealEstate10K stores 9 significant digits; the other layouts full precision
    _same(back, cams, atol=1e-8 if fmt == "re10k" else 1e-12)
    if fmt != "re10k":
        assert (back.width, back.height) == (W, H)
        # and on to a standard RealEstate10K file that camvid's own reader accepts
        write_cameras(tmp_path / "out.txt", back, "re10k")
        np.testing.assert_allclose(read_pose_file(tmp_path / "out.txt").w2c, cams.track.w2c, atol=1e-8)


def test_matrices_layout_round_trip_and_nerf_per_frame_intrinsics(cams, tmp_path):
    write_cameras(tmp_path / "kitti.txt", cams, "matrices")
    back = read_cameras(tmp_path / "kitti.txt", size=(W, H))  # guessed: 12 numbers per line
    np.testing.assert_allclose(back.track.w2c, cams.track.w2c, atol=1e-12)
    assert back.notes and "field of view" in back.notes[0]
    varying = Cameras(CameraTrack(cams.track.url, cams.track.timestamps,
                                  cams.track.intrinsics * np.linspace(1, 1.2, T)[:, None], cams.track.w2c), W, H)
    write_cameras(tmp_path / "t.json", varying)
    data = json.loads((tmp_path / "t.json").read_text())
    assert "fl_x" in data["frames"][0] and "fl_x" not in data
    # NeRF / Blender cameras: camera-to-world, looking down their -z axis, +y up
    m = np.asarray(data["frames"][0]["transform_matrix"])
    c2w = cams.c2w()[0]
    np.testing.assert_allclose(m[:3, 2], -c2w[:3, 2], atol=1e-12)
    np.testing.assert_allclose(m[:3, 1], -c2w[:3, 1], atol=1e-12)
    np.testing.assert_allclose(m[:3, 3], c2w[:3, 3], atol=1e-12)
    _same(read_cameras(tmp_path / "t.json"), varying, atol=1e-12)


def test_readers_name_what_is_missing(cams, tmp_path):
    with pytest.raises(ValueError, match="--size"):
        write_cameras(tmp_path / "c", Cameras(cams.track), "colmap")
    (tmp_path / "bad.json").write_text(json.dumps({"frames": [{"transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(ValueError, match="'w' and 'h'"):
        read_cameras(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="cameras.txt"):
        read_cameras(tmp_path / "nowhere", "colmap")
    with pytest.raises(ValueError, match="format='ply'"):
        read_cameras(tmp_path / "bad.json", "ply")


# --------------------------------------------------------------------------------------------
# validator


def _corrupt(cams: Cameras, tmp_path: Path) -> dict[str, Path]:
    """The good file and one corrupted variant per problem the validator knows."""
    variants = {}

    def write(name, track=None, **kw):
        path = tmp_path / f"{name}.txt"
        write_cameras(path, Cameras(track or cams.track, W, H), "re10k", **kw)
        variants[name] = path

    t = cams.track
    write("good")
    write("inverted", pose="c2w")
    write("opengl", axes="opengl")
    write("pixel", intrinsics="pixel")
    tr = t.w2c.copy()
    tr[:, :, :3] = np.swapaxes(tr[:, :, :3], 1, 2)
    write("transposed", CameraTrack(t.url, t.timestamps, t.intrinsics, tr))
    scaled = t.w2c.copy()
    scaled[5:, :, :3] *= 1.5
    write("scaled_rotation", CameraTrack(t.url, t.timestamps, t.intrinsics, scaled))
    refl = t.w2c.copy()
    refl[:, 1, :] *= -1
    write("reflection", CameraTrack(t.url, t.timestamps, t.intrinsics, refl))
    nonsq = t.intrinsics.copy()
    nonsq[:, 1] *= 1.3
    write("non_square", CameraTrack(t.url, t.timestamps, nonsq, t.w2c))
    write("shuffled_time", CameraTrack(t.url, t.timestamps[::-1].copy(), t.intrinsics, t.w2c))
    lines = variants["good"].read_text().splitlines()
    lines[4] = lines[4].replace(lines[4].split()[9], "nan", 1)
    (tmp_path / "nan.txt").write_text("\n".join(lines) + "\n")
    variants["nan"] = tmp_path / "nan.txt"
    lines = variants["good"].read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:15])
    (tmp_path / "short_line.txt").write_text("\n".join(lines) + "\n")
    variants["short_line"] = tmp_path / "short_line.txt"
    return variants


EXPECTED = {
    "inverted": ("likely_inverted", {"pose": "c2w"}),
    "opengl": ("likely_other_axes", {"axes": "opengl"}),
    "pixel": ("pixel_intrinsics", {"intrinsics": "pixel", "size": f"{W}x{H}"}),
    "transposed": ("likely_transposed", {"pose": "w2c_transposed"}),
    "scaled_rotation": ("not_orthonormal", {}),
    "reflection": ("reflection", {}),
    "non_square": ("non_square_pixels", {}),
    "shuffled_time": ("timestamps", {}),
    "nan": ("non_finite", {}),
    "short_line": ("malformed", {}),
}


def test_validator_passes_the_good_file_and_names_each_corruption(cams, tmp_path):
    variants = _corrupt(cams, tmp_path)
    good = validate_pose_file(variants["good"], size=(W, H))
    assert good.ok and good.command is None, good.format()
    assert validate_pose_file(variants["good"]).ok  # without the size: only the implied aspect (info)
    for name, (code, guess) in EXPECTED.items():
        report = validate_pose_file(variants[name], size=(W, H))
        assert not report.ok and code in report.codes(), f"{name}:\n{report.format()}"
        for key, value in guess.items():
            assert report.guess[key] == value, f"{name}: guessed {report.guess}"
    nan = validate_pose_file(variants["nan"], size=(W, H))
    assert [f.frames for f in nan.findings if f.code == "non_finite"] == [[3]]
    scaled = validate_pose_file(variants["scaled_rotation"])
    assert "scale was folded into the rotation" in scaled.format()


@pytest.mark.parametrize("name", ["inverted", "opengl", "pixel", "transposed"])
def test_the_suggested_command_repairs_the_file(cams, tmp_path, name):
    sys.path.insert(0, str(REPO / "data_prep"))
    import poses

    path = _corrupt(cams, tmp_path)[name]
    report = validate_pose_file(path, size=None if name == "pixel" else (W, H))
    assert report.command and report.command.startswith("python data_prep/poses.py convert ")
    argv = shlex.split(report.command)[2:]
    assert poses.main(argv) == 0
    fixed = read_pose_file(argv[2])
    np.testing.assert_allclose(fixed.w2c, cams.track.w2c, atol=1e-6)
    if name == "pixel":
        # the size is a guess (principal point at the centre): the pixel intrinsics are kept exactly
        w, h = parse_size(report.guess["size"])
        np.testing.assert_allclose(fixed.intrinsics * [w, h, w, h], cams.track.intrinsics * [W, H, W, H], atol=1e-4)
        assert validate_pose_file(argv[2]).ok
    else:
        np.testing.assert_allclose(fixed.intrinsics, cams.track.intrinsics, atol=1e-6)
        assert validate_pose_file(argv[2], size=(W, H)).ok


def test_unknown_layout_gets_a_guess_and_a_command(cams, tmp_path):
    path = tmp_path / "poses_kitti.txt"
    write_cameras(path, cams, "matrices")
    report = validate_pose_file(path, "re10k")  # told RealEstate10K, but the lines are 12 numbers
    assert report.guess["format"] == "matrices" and "format" in report.codes()
    assert "--from matrices" in report.command


def test_colmap_layout_agrees_with_pycolmap(cams, tmp_path):
    """An independent reader/writer: pycolmap loads our text model with the same poses and focal
    lengths, and what pycolmap writes reads back unchanged."""
    import pycolmap

    write_cameras(tmp_path / "model", cams, "colmap")
    (tmp_path / "model" / "points3D.txt").write_text("")
    rec = pycolmap.Reconstruction(str(tmp_path / "model"))
    names = cams.frame_names()
    assert rec.num_images() == T
    for image in rec.images.values():
        i = names.index(image.name)
        np.testing.assert_allclose(image.cam_from_world().matrix(), cams.track.w2c[i], atol=1e-12)
        K = rec.cameras[image.camera_id].calibration_matrix()
        np.testing.assert_allclose([K[0, 0] / W, K[1, 1] / H, K[0, 2] / W, K[1, 2] / H], cams.track.intrinsics[i],
                                   atol=1e-12)
    (tmp_path / "again").mkdir()
    rec.write_text(str(tmp_path / "again"))
    back = read_cameras(tmp_path / "again")
    np.testing.assert_allclose(back.track.w2c, cams.track.w2c, atol=1e-12)
    np.testing.assert_array_equal(back.track.timestamps, cams.track.timestamps)
