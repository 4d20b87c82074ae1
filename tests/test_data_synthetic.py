"""The synthetic renderer: determinism, exact depth, camera paths that stay clear of the scene."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from PIL import Image

from camvid.data.synthetic import (
    CAMERA_REGION,
    TRAJECTORY_KINDS,
    cast_rays,
    default_intrinsics,
    describe_clip,
    make_scene,
    make_trajectory,
    render_frames,
)

_scene_cache = functools.lru_cache(maxsize=None)(make_scene)


@pytest.fixture(scope="module")
def scene():
    return make_scene(7, texture_size=128)


def test_scene_and_render_are_deterministic(scene):
    again = make_scene(7, texture_size=128)
    np.testing.assert_array_equal(scene.textures, again.textures)
    K = default_intrinsics(24, 32)
    c2w = make_trajectory("mixed", 3, seed=2)
    f1, d1 = render_frames(scene, K, c2w, 24, 32)
    f2, d2 = render_frames(again, K, c2w, 24, 32)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(d1, d2)
    assert f1.dtype == np.uint8 and f1.shape == (3, 24, 32, 3)
    assert d1.dtype == np.float32 and d1.shape == (3, 24, 32)
    other = make_scene(8, texture_size=128)
    assert other.textures.shape != scene.textures.shape or not np.array_equal(other.textures, scene.textures)


def test_frames_have_texture_detail(scene):
    K = default_intrinsics(64, 64)
    frames, _ = render_frames(scene, K, make_trajectory("pan", 2, seed=0), 64, 64)
    gray = frames.astype(np.float64).mean(-1)
    # Rich texture: strong local gradients everywhere, not flat colour.
    grad = np.abs(np.diff(gray, axis=-1)).mean()
    assert grad > 3.0


def test_depth_is_exact_against_an_empty_room(scene):
    room = dataclasses.replace(scene, boxes=[], spheres=[], cylinders=[])
    H, W = 16, 20
    K = default_intrinsics(H, W, fov_deg=50.0)
    c2w = np.eye(4)[None].copy()
    c2w[0, :3, 3] = [0.1, -0.05, 0.2]
    _, depth = render_frames(room, K, c2w, H, W)
    # Looking straight down +z: the far wall is a fronto-parallel plane, so every pixel that sees
    # it has the same z-depth (and the narrow field of view keeps the side walls out of the image).
    expected = room.room_max[2] - 0.2
    np.testing.assert_allclose(depth[0], expected, rtol=1e-6)


def _project(K, c2w, X):
    w2c = np.linalg.inv(c2w)
    Xc = X @ w2c[:3, :3].T + w2c[:3, 3]
    uvw = Xc @ K.T
    return uvw[:, :2] / uvw[:, 2:3], Xc[:, 2]


@pytest.mark.parametrize("kind", ["orbit", "mixed"])
def test_depth_reprojects_between_frames(scene, kind):
    H, W = 48, 64
    K = default_intrinsics(H, W)
    c2w = make_trajectory(kind, 8, seed=3)[[0, 7]]
    frames, depth = render_frames(scene, K, c2w, H, W)
    vs, us = np.mgrid[0:H, 0:W]
    pix = np.stack([us.ravel() + 0.5, vs.ravel() + 0.5, np.ones(H * W)], -1)
    X_cam = (pix @ np.linalg.inv(K).T) * depth[0].reshape(-1, 1).astype(np.float64)
    X = X_cam @ c2w[0, :3, :3].T + c2w[0, :3, 3]
    uv, z = _project(K, c2w[1], X)
    inside = (uv[:, 0] > 1) & (uv[:, 0] < W - 1) & (uv[:, 1] > 1) & (uv[:, 1] < H - 1) & (z > 0)
    assert inside.mean() > 0.3
    # Cast a ray through the exact projected sub-pixel position in frame 1: an unoccluded point is
    # hit again at the same depth; nothing can be hit *behind* it.
    rays = np.concatenate([uv[inside], np.ones((inside.sum(), 1))], -1) @ np.linalg.inv(K).T
    hits = cast_rays(scene, c2w[1, :3, 3], rays @ c2w[1, :3, :3].T)
    z_in = z[inside]
    assert (hits.t <= z_in * (1 + 1e-5) + 1e-5).all()
    visible = np.abs(hits.t - z_in) <= 1e-5 * z_in + 1e-5
    assert visible.mean() > 0.8
    # Colours agree for visible points (bilinear lookup in frame 1) far better than for a shuffle.
    f1 = frames[1].astype(np.float64)
    x, y = uv[inside][:, 0] - 0.5, uv[inside][:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    sample = (
        f1[y0, x0] * (1 - ax) * (1 - ay) + f1[y0, x0 + 1] * ax * (1 - ay)
        + f1[y0 + 1, x0] * (1 - ax) * ay + f1[y0 + 1, x0 + 1] * ax * ay
    )
    src = frames[0].reshape(-1, 3)[inside].astype(np.float64)
    err = np.abs(sample - src).mean(-1)[visible]
    shuffled = np.abs(np.roll(sample, 7, axis=0) - src).mean(-1)[visible]
    assert np.median(err) < 0.5 * np.median(shuffled)


@pytest.mark.parametrize("kind", TRAJECTORY_KINDS)
def test_trajectories_are_rigid_and_stay_clear_of_objects(kind):
    for seed in range(4):
        scene = _scene_cache(seed, 32)
        c2w = make_trajectory(kind, 16, seed)
        assert c2w.shape == (16, 4, 4) and c2w.dtype == np.float64
        R = c2w[:, :3, :3]
        np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
        np.testing.assert_array_equal(c2w[:, 3], np.broadcast_to([0, 0, 0, 1.0], (16, 4)))
        pos = c2w[:, :3, 3]
        assert (np.hypot(pos[:, 0], pos[:, 2]) <= CAMERA_REGION["radius"] + 1e-9).all()
        assert (np.abs(pos[:, 1]) <= CAMERA_REGION["half_height"] + 1e-9).all()
        for box in scene.boxes:
            c, s = np.cos(box.yaw), np.sin(box.yaw)
            Rb = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
            local = np.abs((pos - box.center) @ Rb) - box.half
            assert (np.linalg.norm(np.maximum(local, 0), axis=-1) > 0.5).all()
        for sph in scene.spheres:
            assert (np.linalg.norm(pos - sph.center, axis=-1) > sph.radius + 0.5).all()
        for cyl in scene.cylinders:
            assert (np.hypot(pos[:, 0] - cyl.center_xz[0], pos[:, 2] - cyl.center_xz[1]) > cyl.radius + 0.5).all()
        # The camera actually moves or turns.
        motion = np.linalg.norm(pos[-1] - pos[0]) + np.arccos(np.clip(R[0, :, 2] @ R[-1, :, 2], -1, 1))
        assert motion > 0.2
    np.testing.assert_array_equal(make_trajectory(kind, 5, 1), make_trajectory(kind, 5, 1))


def test_pan_rotates_in_place_and_truck_slides_sideways():
    pan = make_trajectory("pan", 8, 0)
    np.testing.assert_allclose(pan[:, :3, 3], np.broadcast_to(pan[0, :3, 3], (8, 3)))
    truck = make_trajectory("truck", 8, 0)
    np.testing.assert_allclose(truck[:, :3, :3], np.broadcast_to(truck[0, :3, :3], (8, 3, 3)))
    step = truck[-1, :3, 3] - truck[0, :3, 3]
    # Displacement along the camera x axis only.
    np.testing.assert_allclose(step @ truck[0, :3, :3], [np.linalg.norm(step) * np.sign(step @ truck[0, :3, 0]), 0, 0],
                               atol=1e-9)


def test_geometry_does_not_depend_on_texture_size():
    small, large = make_scene(5, texture_size=32), make_scene(5, texture_size=64)
    assert small.textures.shape[1:3] == (32, 32) and large.textures.shape[1:3] == (64, 64)
    np.testing.assert_array_equal(small.room_max, large.room_max)
    assert [b.center.tolist() for b in small.boxes] == [b.center.tolist() for b in large.boxes]
    assert small.describe() == large.describe()


def test_default_intrinsics():
    K = default_intrinsics(48, 64, fov_deg=90.0)
    np.testing.assert_allclose(K, [[32, 0, 32], [0, 32, 24], [0, 0, 1]])


def test_bad_inputs_raise(scene):
    with pytest.raises(ValueError, match="unknown kind 'spiral'"):
        make_trajectory("spiral", 4, 0)
    with pytest.raises(ValueError, match="num_frames"):
        make_trajectory("pan", 0, 0)
    with pytest.raises(ValueError, match="K must be"):
        render_frames(scene, np.eye(4), make_trajectory("pan", 2, 0), 8, 8)
    with pytest.raises(ValueError, match="c2w must be"):
        render_frames(scene, default_intrinsics(8, 8), np.eye(4), 8, 8)
    with pytest.raises(ValueError, match="fov_deg"):
        default_intrinsics(8, 8, fov_deg=0)
    assert "pans" in describe_clip(scene, "pan") and "room" in describe_clip(scene, "pan")


def test_trajectories_of_one_room_share_their_first_view(tmp_path):
    """trajectories_per_scene: the clips of a room start from the same camera and frame, then move
    differently; the test split takes whole rooms, so no test room is seen in training."""
    from camvid.data.layout import frame_dir
    from camvid.data.synthetic_writer import write_synthetic_re10k
    from camvid.geometry.cameras import read_pose_file

    start = make_trajectory("pan", 6, 3, start_seed=11)
    assert np.allclose(make_trajectory("truck", 6, 4, start_seed=11)[0], start[0])
    assert not np.allclose(make_trajectory("truck", 6, 4, start_seed=11)[-1], start[-1])
    assert np.array_equal(make_trajectory("pan", 6, 3), make_trajectory("pan", 6, 3, start_seed=None))

    split = write_synthetic_re10k(tmp_path, num_clips=6, num_frames=4, height=16, width=16, seed=2,
                                  test_every=2, texture_size=32, trajectories_per_scene=3)
    assert split.train == [f"syn0002{i:06d}" for i in range(3)]
    assert split.test == [f"syn0002{i:06d}" for i in range(3, 6)]
    for name, ids in (("train", split.train), ("test", split.test)):
        tracks = [read_pose_file(tmp_path / name / f"{c}.txt") for c in ids]
        firsts = [np.asarray(Image.open(frame_dir(tmp_path, name, c) / "00000.png")) for c in ids]
        assert all(np.allclose(t.w2c[0], tracks[0].w2c[0]) for t in tracks)
        assert all(np.array_equal(f, firsts[0]) for f in firsts)
        assert len({t.url for t in tracks}) == 3 and not np.allclose(tracks[0].w2c[-1], tracks[1].w2c[-1])
    with pytest.raises(ValueError, match="trajectories_per_scene"):
        write_synthetic_re10k(tmp_path / "bad", 2, 2, 8, 8, trajectories_per_scene=0)


def test_rendering_refuses_a_folder_that_holds_something_else(tmp_path):
    from camvid.data.synthetic_writer import ensure_synthetic_dataset

    # the demo's output folder, one level above the rooms: named, nothing touched, nothing left behind
    root = tmp_path / "data"
    (root / "synthetic").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"data exists and is not the synthetic dataset.*data/synthetic"):
        ensure_synthetic_dataset(root, num_clips=2, num_frames=4, height=16, width=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (root / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not the synthetic dataset"):
        ensure_synthetic_dataset(a_file, num_clips=2, num_frames=4, height=16, width=16)
    # an empty folder is rendered into
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (ensure_synthetic_dataset(empty, num_clips=2, num_frames=4, height=16, width=16, texture_size=64)
            / "captions.json").is_file()
