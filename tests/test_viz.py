"""The trajectory viewer: frustum geometry, PNG output for every input kind, HTML via plotly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camvid.geometry.conventions import Cameras, write_cameras
from camvid.trajectories import preset_track
from camvid.viz import camera_paths, frustum_segments, plot_cameras, plot_cameras_html


def test_frustum_points_at_the_image_corners_along_the_view_direction():
    c2w = np.eye(4)[None].copy()
    c2w[0, :3, 3] = [1.0, 2.0, 3.0]
    intr = np.array([[0.5, 0.5, 0.5, 0.5]])  # 90 degree field of view each way
    seg = frustum_segments(c2w, intr, depth=2.0)[0]
    assert seg.shape == (11, 2, 3)
    np.testing.assert_allclose(seg[:4, 0], np.tile([1.0, 2.0, 3.0], (4, 1)))  # from the centre
    np.testing.assert_allclose(seg[:4, 1], [[-1, 0, 5], [3, 0, 5], [3, 4, 5], [-1, 4, 5]])  # corners at z=2
    # the "up" marker sits above the top edge (-y in OpenCV) of the image
    assert seg[8:, :, 1].min() < 0 and seg[8:, :, 1].max() <= 0 + 1e-12
    # a rotated camera rotates its frustum
    yaw = np.eye(4)[None].copy()
    yaw[0, :3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]  # camera z -> world +x
    far = frustum_segments(yaw, intr, 1.0)[0, :4, 1]
    np.testing.assert_allclose(far[:, 0], 1.0)


def test_png_from_every_input_kind(tmp_path):
    track = preset_track("orbit", 10, (64, 96))
    write_cameras(tmp_path / "orbit.txt", Cameras(track))
    write_cameras(tmp_path / "t.json", Cameras(preset_track("pan", 10, (64, 96)), 96, 64))
    tensor = torch.from_numpy(track.c2w()).float()
    for name, cams in {"file": tmp_path / "orbit.txt", "json": tmp_path / "t.json", "track": track,
                       "tensor": tensor, "many": [tmp_path / "orbit.txt", tmp_path / "t.json", track.c2w()]}.items():
        out = tmp_path / f"{name}.png"
        fig = plot_cameras(cams, out)
        assert out.stat().st_size > 5000
        from PIL import Image

        img = np.asarray(Image.open(out).convert("L"))
        assert img.std() > 5  # something drawn, not a blank canvas
        if name == "many":
            assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["orbit", "t", "path 2"]


def test_normalize_and_intrinsics_of_array_inputs():
    track = preset_track("truck", 8, (64, 64))
    c2w = track.c2w()
    c2w[:, :3, 3] *= 5
    [p] = camera_paths(c2w, normalize=True)
    np.testing.assert_allclose(p.c2w[0], np.eye(4), atol=1e-12)
    assert np.linalg.norm(p.c2w[:, :3, 3], axis=-1).max() == pytest.approx(1.0)
    K = np.array([[40.0, 0, 32], [0, 40, 32], [0, 0, 1]])
    [p] = camera_paths(c2w, K=K, image_hw=(64, 64))
    np.testing.assert_allclose(p.intrinsics[0], [40 / 64, 40 / 64, 0.5, 0.5])


def test_bad_inputs_are_named():
    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[1, 0, 3] = np.nan
    with pytest.raises(ValueError, match="frame 1 has a non-finite pose"):
        plot_cameras(c2w)
    with pytest.raises(ValueError, match="2 labels for 1"):
        plot_cameras([np.tile(np.eye(4), (3, 1, 1))], labels=["a", "b"])
    with pytest.raises(ValueError, match=r"\(T, 4, 4\)"):
        plot_cameras([np.eye(4)])


def test_html_viewer(tmp_path, monkeypatch):
    track = preset_track("mixed", 6, (64, 64))
    try:
        import plotly  # noqa: F401
    except ImportError:
        plotly = None
    if plotly is not None:
        out = plot_cameras_html([track, track.c2w()], tmp_path / "v.html", labels=["a", "b"])
        text = out.read_text()
        assert "plotly" in text.lower() and "a frustums" in text
    import builtins

    real_import = builtins.__import__

    def no_plotly(name, *args, **kwargs):
        if name.startswith("plotly"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_plotly)
    with pytest.raises(ImportError, match=r"pip install plotly"):
        plot_cameras_html(track, tmp_path / "w.html")


def test_evaluation_draws_requested_vs_recovered(tmp_path):
    from camvid.evaluation.camera_plots import draw_requested_vs_recovered
    from camvid.evaluation.layout import read_samples, write_sample

    track = preset_track("orbit", 6, (32, 32))
    K = np.array([[28.0, 0, 16], [0, 28, 16], [0, 0, 1]])
    video = np.zeros((6, 32, 32, 3), np.uint8)
    for sid in ("a", "b"):
        write_sample(tmp_path / "s", sid, video, K, track.c2w(), "", 0)
    recovered = track.c2w() * 1.0
    recovered[:, :3, 3] *= 3  # SfM's scale: the picture normalises both
    per_video = [
        {"sample_id": "a", "trials": [{"seed": 0, "success": True, "reason": "", "RotErr": 0.01, "TransErr": 0.02,
                                       "c2w": recovered.tolist()}]},
        {"sample_id": "b", "trials": [{"seed": 0, "success": False, "reason": "no reconstruction"}]},
    ]
    paths = draw_requested_vs_recovered(read_samples(tmp_path / "s"), per_video, tmp_path / "cams")
    assert [p.name for p in paths] == ["a.png", "b.png"] and all(p.stat().st_size > 5000 for p in paths)
    assert draw_requested_vs_recovered(read_samples(tmp_path / "s"), per_video, tmp_path / "c2", max_videos=1)[0].name == "a.png"
