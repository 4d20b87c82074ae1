"""The sample folder layout shared by src/sample.py and src/evaluate.py."""

import json

import numpy as np
import pytest

from camvid.evaluation.layout import read_samples, read_video, write_sample, write_video


def _clip(T=4, H=32, W=48, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    K = np.array([[40.0, 0, W / 2], [0, 41.0, H / 2], [0, 0, 1]])
    c2w = np.stack([np.eye(4)] * T)
    c2w[:, 0, 3] = np.arange(T) * 0.1
    c2w[:, :3, :3] = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    return video, K, c2w


def test_round_trip(tmp_path):
    video, K, c2w = _clip()
    write_sample(tmp_path, "b_2", video, K, c2w, "a red room", 7, gt_video=video,
                 meta={"method": "cami2v", "group": "scene0", "view": 1, "paper_row": "cami2v_t1_cami2v"})
    write_sample(tmp_path, "a_1", video, np.broadcast_to(K, (4, 3, 3)), c2w, "", 3)
    recs = read_samples(tmp_path)
    assert [r.sample_id for r in recs] == ["a_1", "b_2"]
    r = recs[1]
    assert r.caption == "a red room" and r.seed == 7 and (r.height, r.width) == (32, 48)
    assert r.group == "scene0" and r.view == 1 and r.meta["method"] == "cami2v"
    np.testing.assert_allclose(r.K, np.broadcast_to(K, (4, 3, 3)), rtol=1e-7)
    np.testing.assert_allclose(r.c2w, c2w, atol=1e-7)
    assert r.gt_video_path is not None and recs[0].gt_video_path is None
    decoded = r.load_video()
    assert decoded.shape == video.shape and decoded.dtype == np.uint8
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["samples"] == ["a_1", "b_2"] and index["format"] == "camvid-samples"
    # the pose file is RealEstate10K's: URL line, then 19 numbers per frame
    lines = (tmp_path / "b_2" / "cameras.txt").read_text().splitlines()
    assert lines[0] == "b_2" and len(lines) == 5 and len(lines[1].split()) == 19


def test_mp4_is_near_lossless_on_smooth_content(tmp_path):
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    # smooth luminance and chroma: yuv420p halves chroma resolution, so sharp colour edges would not survive
    frame = np.stack([60 + 2 * x, 60 + 2 * y, 90 + x + y], -1).astype(np.uint8)
    video = np.stack([np.roll(frame, i, axis=1) for i in range(3)])
    write_video(tmp_path / "v.mp4", video)
    back = read_video(tmp_path / "v.mp4")
    assert np.abs(back.astype(int) - video.astype(int)).mean() < 2.0


def test_bad_input_is_named(tmp_path):
    video, K, c2w = _clip()
    with pytest.raises(ValueError, match="sample_id"):
        write_sample(tmp_path, "../x", video, K, c2w, "", 0)
    with pytest.raises(ValueError, match="camera poses for a video of 4 frames"):
        write_sample(tmp_path, "s", video, K, c2w[:3], "", 0)
    with pytest.raises(ValueError, match="uint8"):
        write_sample(tmp_path, "s", video.astype(np.float32), K, c2w, "", 0)
    with pytest.raises(ValueError, match="even"):
        write_sample(tmp_path, "s", video[:, :31], K, c2w, "", 0)
    bad = c2w.copy()
    bad[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="frame"):
        write_sample(tmp_path, "s", video, K, bad, "", 0)
    with pytest.raises(ValueError, match="no sample folders"):
        read_samples(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="missing keys"):
        read_samples(tmp_path)
