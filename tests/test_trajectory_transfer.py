"""Trajectory transfer: one clip's camera path applied to another image (square pixels for every
aspect pair, translation rescaled, relative to the first frame) and the sampler's trajectory inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from camvid.geometry.cameras import CameraTrack, read_pose_file
from camvid.geometry.conventions import Cameras, invert_poses, write_cameras
from camvid.sampling import trajectory_cameras
from camvid.trajectories import adapt_intrinsics, preset_track, resolve_trajectories, transfer_track

# (width, height): landscape, portrait, square, cinema, phone
SIZES = [(1920, 1080), (1080, 1920), (512, 512), (2048, 858), (640, 480), (480, 854)]


def _source_track(width: int, height: int, T: int = 10) -> CameraTrack:
    from camvid.data.synthetic import make_trajectory

    c2w = make_trajectory("mixed", T, 2)
    c2w[:, :3, 3] = c2w[:, :3, 3] * 3 + [1.0, 0.2, -4.0]  # an SfM world frame and scale
    f = 0.6 * width  # square pixels in the source video
    intr = np.tile([f / width, f / height, 0.52, 0.47], (T, 1))
    return CameraTrack("source", np.arange(T) * 33_000, intr, invert_poses(c2w)[:, :3])


@pytest.mark.parametrize("src,dst", list(itertools.product(SIZES, SIZES)))
def test_square_pixels_for_every_aspect_pair(src, dst):
    track = _source_track(*src)
    out = transfer_track(track, (dst[1], dst[0]))
    fx_px, fy_px = out.intrinsics[:, 0] * dst[0], out.intrinsics[:, 1] * dst[1]
    np.testing.assert_allclose(fx_px, fy_px, rtol=1e-12)
    # the source frame covers the target: the field of view never grows along either axis
    src_fov = 2 * np.arctan(0.5 / track.intrinsics[0, :2])
    dst_fov = 2 * np.arctan(0.5 / out.intrinsics[0, :2])
    assert (dst_fov <= src_fov + 1e-12).all()
    # and along the limiting axis it is kept exactly
    assert np.isclose(dst_fov, src_fov, rtol=1e-12).any()
    # on to the generation resolution through the sampler: still square (up to the resize rounding)
    for hw in ((256, 256), (320, 512)):
        path_K, _ = trajectory_cameras_from(out, dst, hw)
        np.testing.assert_allclose(path_K[:, 0, 0], path_K[:, 1, 1], rtol=0.01)


def trajectory_cameras_from(track, size, hw):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    write_cameras(d / "p.txt", Cameras(track), "re10k")
    return trajectory_cameras(str(d / "p.txt"), len(track), hw, src_hw=(size[1], size[0]))


def test_same_aspect_keeps_the_intrinsics_and_principal_point():
    track = _source_track(1920, 1080)
    np.testing.assert_allclose(adapt_intrinsics(track.intrinsics, (540, 960)), track.intrinsics, rtol=1e-12)


def test_relative_to_first_frame_and_rescaled():
    track = _source_track(640, 480)
    out = transfer_track(track, (480, 640), translation_scale=0.5, num_frames=8)
    c2w = out.c2w()
    assert len(out) == 8
    np.testing.assert_allclose(c2w[0], np.eye(4), atol=1e-12)
    assert np.linalg.norm(c2w[:, :3, 3], axis=-1).max() == pytest.approx(0.5)
    # the shape of the path is unchanged: rotations and translation directions
    src = np.linalg.inv(track.c2w()[0])[None] @ track.c2w()[:8]
    np.testing.assert_allclose(c2w[:, :3, :3], src[:, :3, :3], atol=1e-12)
    cos = np.einsum("ti,ti->t", c2w[1:, :3, 3], src[1:, :3, 3]) / (
        np.linalg.norm(c2w[1:, :3, 3], axis=-1) * np.linalg.norm(src[1:, :3, 3], axis=-1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="frames=20"):
        transfer_track(track, (480, 640), num_frames=20)


def test_resolve_trajectories_for_the_sampler(tmp_path):
    track = _source_track(1280, 720, T=12)
    write_cameras(tmp_path / "clip.json", Cameras(track, 1280, 720))  # another layout
    specs = resolve_trajectories(["orbit", str(tmp_path / "clip.json"), "pan"], tmp_path / "out", 8, (600, 400),
                                 translation_scale=None)
    assert specs[0] == "orbit" and specs[2] == "pan"
    moved = read_pose_file(specs[1])
    assert len(moved) == 8 and "transfer" in moved.url
    np.testing.assert_allclose(moved.intrinsics[:, 0] * 400, moved.intrinsics[:, 1] * 600, rtol=1e-8)
    scaled = resolve_trajectories(["truck"], tmp_path / "out2", 8, (64, 64), translation_scale=2.0)
    c2w = read_pose_file(scaled[0]).c2w()
    assert np.linalg.norm(c2w[:, :3, 3], axis=-1).max() == pytest.approx(2.0, rel=1e-6)
    # a scaled preset is the preset's path, only longer
    K, rel = trajectory_cameras("truck", 8, (64, 64))
    ref = rel.double().numpy()
    ref_len = np.linalg.norm(ref[:, :3, 3], axis=-1).max()
    np.testing.assert_allclose(c2w[:, :3, 3], ref[:, :3, 3] * 2.0 / ref_len, atol=1e-5)
    with pytest.raises(ValueError, match="not a pose file and not a preset"):
        resolve_trajectories(["zigzag"], tmp_path, 8, (64, 64))
    with pytest.raises(ValueError, match="12 cameras, the model generates 16"):
        resolve_trajectories([str(tmp_path / "clip.json")], tmp_path, 16, (64, 64))


def test_preset_track_matches_the_sampler_preset():
    K, c2w = trajectory_cameras("orbit", 8, (48, 64))
    track = preset_track("orbit", 8, (48, 64))
    np.testing.assert_allclose(np.linalg.inv(track.c2w()[0]) @ track.c2w(), c2w.double().numpy(), atol=1e-5)
    np.testing.assert_allclose(track.intrinsics[0, 0] * 64, K[0, 0, 0].item(), rtol=1e-6)
    assert isinstance(K, torch.Tensor)


def test_a_video_trajectory_is_annotated_with_the_requested_stride(tmp_path, monkeypatch):
    """The wiring from sample.py's trajectory=VIDEO to the annotation (SfM itself: test_annotate_poses.py)."""
    from camvid.evaluation import annotate

    seen = {}

    def fake_annotate(source, options):
        seen.update(source=str(source), stride=options.stride, max_frames=options.max_frames)
        return annotate.AnnotationResult(_source_track(640, 360, T=options.max_frames), np.arange(8), np.ones(8, bool),
                                         {}, [], None, (640, 360), str(source))

    monkeypatch.setattr(annotate, "annotate_video", fake_annotate)
    (tmp_path / "walk.mp4").write_bytes(b"")
    [spec] = resolve_trajectories([str(tmp_path / "walk.mp4")], tmp_path / "out", 8, (512, 512), stride=3)
    assert seen == {"source": str(tmp_path / "walk.mp4"), "stride": 3, "max_frames": 8}
    moved = read_pose_file(spec)
    np.testing.assert_allclose(moved.intrinsics[:, 0], moved.intrinsics[:, 1], rtol=1e-12)  # square target
