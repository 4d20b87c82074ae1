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


# ----------------------------------------------------------------------------- issue 7: sampler fixes


def _pose_file(path, src_hw, num=4):
    """A RealEstate10K pose file recorded on a ``src_hw`` video (square pixels: fx W = fy H)."""
    from camvid.geometry.cameras import CameraTrack, write_pose_file

    H, W = src_hw
    f = 0.6 * W  # pixels
    intr = np.tile([f / W, f / H, 0.5, 0.5], (num, 1))
    w2c = np.tile(np.eye(4)[:3], (num, 1, 1))
    w2c[:, 0, 3] = np.linspace(0, 0.2, num)
    write_pose_file(path, CameraTrack("https://example.com/clip", np.arange(num) * 33_333, intr, w2c))
    return path, f


@pytest.mark.parametrize("src_hw", [(360, 640), (480, 480), (640, 360)])
@pytest.mark.parametrize("hw", [(256, 256), (320, 512), (256, 384), (512, 320)])
def test_pose_file_intrinsics_are_square_pixel_for_every_aspect(tmp_path, src_hw, hw):
    path, f = _pose_file(tmp_path / "poses.txt", src_hw)
    K, _ = trajectory_cameras(str(path), 4, hw)
    # short-side resize + centre crop: the focal length scales with the covering factor
    s = max(hw[0] / src_hw[0], hw[1] / src_hw[1])
    assert float(K[0, 0, 0]) == pytest.approx(float(K[0, 1, 1]), rel=1e-2)
    assert float(K[0, 0, 0]) == pytest.approx(f * s, rel=1e-2)
    # the principal point stays at the centre of the generated frame
    assert float(K[0, 0, 2]) == pytest.approx(hw[1] / 2, abs=1.0) and float(K[0, 1, 2]) == pytest.approx(hw[0] / 2,
                                                                                                         abs=1.0)
    # an explicit source size gives the same cameras; a wrong one is warned about
    K2, _ = trajectory_cameras(str(path), 4, hw, src_hw=src_hw)
    torch.testing.assert_close(K2, K, rtol=1e-2, atol=0.5)
    if src_hw[0] != src_hw[1]:
        with pytest.warns(UserWarning, match="non-square pixels"):
            trajectory_cameras(str(path), 4, hw, src_hw=(src_hw[1], src_hw[0]))


def test_guidance_override_changes_only_its_keys():
    from camvid.sampling import merged_guidance

    train_cfg = compose(["backbone=dynamicrafter_256"])
    cfg = _sample_cfg("guidance.camera_scale=1")
    merged = merged_guidance(train_cfg, cfg.guidance)
    assert merged["camera_scale"] == 1 and merged["scale"] == 7.5 and merged["rescale"] == 0.7
    assert merged_guidance(train_cfg, None) == merged_guidance(train_cfg, _sample_cfg().guidance)
    with pytest.raises(ValueError, match=r"guidance keys \['cfg'\] are unknown"):
        merged_guidance(train_cfg, {"cfg": 2.0})
    # CamI2V Table 1: every method samples with 25 DDIM steps, zero-shot DynamiCrafter included
    for model in ("dynamicrafter", "motionctrl", "cameractrl", "cami2v"):
        assert compose([f"model={model}", "backbone=dynamicrafter_256"]).model.sampler.steps == 25


def test_reversed_second_trajectory_starts_at_its_old_end():
    from camvid.sampling import reverse_trajectory

    K, c2w = trajectory_cameras("truck", 8, (32, 32))
    K_r, c2w_r = reverse_trajectory(K, c2w)
    torch.testing.assert_close(c2w_r[0], torch.eye(4))
    # frame t of the reversed track is frame T-1-t of the original, relative to the old last frame
    expected = torch.linalg.inv(c2w[-1].double()) @ c2w[2].double()
    torch.testing.assert_close(c2w_r[-3].double(), expected, atol=1e-5, rtol=1e-5)


def test_released_weights_sample_without_a_run_directory(data_root, tmp_path):
    """pretrained= (base) + method_ckpt= (trainable modules) -> video, no camvid run directory."""
    from camvid.models.dynamicrafter.checkpoint import is_camera_key
    from camvid.models.registry import build_method
    from conftest import TINY

    overrides = ["model=cami2v", "backbone=tiny_dynamicrafter", *TINY[:3]]
    torch.manual_seed(0)
    model = build_method(compose([*overrides, "data=synthetic"]))
    state = model.state_dict()
    torch.save({"state_dict": {k: v for k, v in state.items() if not is_camera_key(k)}}, tmp_path / "model.ckpt")
    torch.save({k: v for k, v in state.items() if is_camera_key(k)}, tmp_path / "256_cami2v.pt")
    image = sorted((data_root / "train" / "frames").glob("*/00000.png"))[0]
    cfg = _sample_cfg(*overrides, f"pretrained={tmp_path / 'model.ckpt'}",
                      f"method_ckpt={tmp_path / '256_cami2v.pt'}", f"image={image}", "trajectory=orbit",
                      f"out_dir={tmp_path / 'out'}")
    [folder] = run_sampling(cfg)
    [record] = read_samples(tmp_path / "out")
    assert record.load_video().shape == (8, 32, 32, 3)
    assert record.meta["checkpoint"] == str(tmp_path / "256_cami2v.pt")
    with pytest.raises(ValueError, match="give pretrained=PATH"):
        run_sampling(_sample_cfg(*overrides, f"image={image}", f"out_dir={tmp_path / 'x'}"))
