"""src/sample.py: a trained run + image + trajectory -> video, GIF and cameras; batch mode -> evaluator folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camvid.evaluation.layout import read_samples
from camvid.geometry.cameras import read_pose_file
from camvid.sampling import run_sampling, trajectory_cameras
from camvid.training.loop import train
from conftest import compose, data_overrides, run_overrides


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    out = {}
    for model, family in (("cami2v", "dynamicrafter"), ("cvd", "animatediff")):
        run = tmp_path_factory.mktemp(f"run_{model}")
        train(compose(run_overrides(data_root, run, f"model={model}", f"backbone=tiny_{family}",
                                 *data_overrides(model, data_root))))
        out[model] = run
    return out


def _sample_cfg(*overrides: str):
    return compose(["steps=2", *overrides], config_name="sample")


def test_single_video_along_a_preset_and_a_pose_file(runs, data_root, tmp_path):
    image = sorted((data_root / "train" / "frames").glob("*/00000.png"))[0]
    cfg = _sample_cfg(f"run_dir={runs['cami2v']}", f"image={image}", "caption=a room", "trajectory=orbit",
                      f"out_dir={tmp_path / 'preset'}")
    [folder] = run_sampling(cfg)
    assert {"video.mp4", "video.gif", "cameras.txt", "meta.json"} <= {p.name for p in folder.iterdir()}
    [record] = read_samples(tmp_path / "preset")
    video = record.load_video()
    assert video.shape == (8, 32, 32, 3)
    # the written cameras are the preset trajectory at the generation resolution, relative to frame 0
    K, c2w = trajectory_cameras("orbit", 8, (32, 32))
    track = read_pose_file(folder / "cameras.txt")
    np.testing.assert_allclose(track.intrinsics[:, 0] * 32, K[:, 0, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(track.c2w(), c2w.double().numpy(), atol=1e-5)

    pose_file = sorted((data_root / "train").glob("*.txt"))[0]
    cfg = _sample_cfg(f"run_dir={runs['cami2v']}", f"image={image}", f"trajectory={pose_file}",
                      f"out_dir={tmp_path / 'posefile'}")
    [folder] = run_sampling(cfg)
    assert read_pose_file(folder / "cameras.txt").c2w()[0] == pytest.approx(np.eye(4), abs=1e-6)


def test_bad_sampling_requests_are_named(runs, data_root, tmp_path):
    image = sorted((data_root / "train" / "frames").glob("*/00000.png"))[0]
    with pytest.raises(ValueError, match="image-to-video: give image=PATH"):
        run_sampling(_sample_cfg(f"run_dir={runs['cami2v']}", f"out_dir={tmp_path}"))
    with pytest.raises(FileNotFoundError, match="image not found"):
        run_sampling(_sample_cfg(f"run_dir={runs['cami2v']}", f"image={tmp_path / 'no.png'}", f"out_dir={tmp_path}"))
    with pytest.raises(ValueError, match="not a pose file and not a preset"):
        run_sampling(_sample_cfg(f"run_dir={runs['cami2v']}", f"image={image}", "trajectory=zigzag",
                                 f"out_dir={tmp_path}"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_sampling(_sample_cfg(f"run_dir={tmp_path}", f"out_dir={tmp_path}"))


def test_batch_mode_writes_the_evaluator_layout(runs, data_root, tmp_path):
    cfg = _sample_cfg(f"run_dir={runs['cami2v']}", f"test_data={data_root}", "num_samples=1", "stride=1",
                      f"out_dir={tmp_path}")
    [folder] = run_sampling(cfg)
    [record] = read_samples(tmp_path)
    assert record.gt_video_path is not None and record.load_gt_video().shape == record.load_video().shape
    assert record.meta["method"] == "cami2v" and (folder / "video.gif").is_file()


def test_multi_view_model_samples_one_video_per_trajectory(runs, tmp_path):
    cfg = _sample_cfg(f"run_dir={runs['cvd']}", "trajectory=[orbit,pan]", "caption=a room",
                      f"out_dir={tmp_path}")
    folders = run_sampling(cfg)
    assert [f.name for f in folders] == ["view0", "view1"]
    videos = [r.load_video() for r in read_samples(tmp_path)]
    assert all(v.shape == (8, 32, 32, 3) for v in videos)
    with pytest.raises(ValueError, match="generates several videos together"):
        run_sampling(_sample_cfg(f"run_dir={runs['cvd']}", "trajectory=orbit", f"out_dir={tmp_path / 'x'}"))
    assert torch.is_tensor(trajectory_cameras("pan", 8, (32, 32))[1])


def test_camera_path_of_one_clip_applied_to_another_image(runs, data_root, tmp_path):
    """Trajectory transfer: a square clip's pose file on a wide image, rescaled; a picture of the path."""
    from PIL import Image

    frame = sorted((data_root / "train" / "frames").glob("*/00000.png"))[0]
    wide = tmp_path / "wide.png"
    Image.open(frame).resize((96, 40)).save(wide)
    pose_file = sorted((data_root / "train").glob("*.txt"))[-1]
    cfg = _sample_cfg(f"run_dir={runs['cami2v']}", f"image={wide}", f"trajectory={pose_file}",
                      "trajectory_scale=0.5", f"out_dir={tmp_path / 'out'}")
    [folder] = run_sampling(cfg)
    assert (folder / "cameras.png").stat().st_size > 5000
    moved = read_pose_file(tmp_path / "out" / "trajectories" / "view0.txt")
    np.testing.assert_allclose(moved.intrinsics[:, 0] * 96, moved.intrinsics[:, 1] * 40, rtol=1e-8)
    track = read_pose_file(folder / "cameras.txt")
    c2w = track.c2w()
    assert np.linalg.norm(c2w[:, :3, 3], axis=-1).max() == pytest.approx(0.5, rel=1e-5)
    # square pixels at the generation resolution too (32 x 32 from a 96 x 40 image)
    np.testing.assert_allclose(track.intrinsics[:, 0], track.intrinsics[:, 1], rtol=0.02)
