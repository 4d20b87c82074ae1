"""The CamI2V camera pipeline end to end on rendered clips whose cameras are known exactly."""

import numpy as np
import pytest

from camvid.evaluation import camera_accuracy
from camvid.evaluation.camera_accuracy import CameraAccuracyConfig, VideoJob, evaluate_camera_accuracy
from camvid.evaluation.layout import read_samples, write_sample
from camvid.evaluation.sfm import SfmOptions

H = W = 128
T = 8


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from camvid.data.synthetic import default_intrinsics, make_scene, make_trajectory, render_frames

    root = tmp_path_factory.mktemp("camera_samples")
    K = default_intrinsics(H, W)
    c2w = make_trajectory("forward", T, 0)
    video, _ = render_frames(make_scene(0), K, c2w, H, W)
    write_sample(root, "gt", video, K, c2w, "a room", 0, gt_video=video)
    write_sample(root, "shuffled", video[[0, 5, 2, 7, 1, 6, 3, 4]], K, c2w, "a room", 0)
    write_sample(root, "blank", np.full((T, H, W, 3), 127, np.uint8), K, c2w, "nothing", 0)
    return root


def _jobs(root):
    return [VideoJob(r.sample_id, str(r.video_path), r.K[0], r.c2w) for r in read_samples(root)]


@pytest.fixture(scope="module")
def result(samples):
    config = CameraAccuracyConfig(trials=1, progress=False, cache_dir=str(samples / "cache"))
    return evaluate_camera_accuracy(_jobs(samples), config)


def test_known_cameras_are_recovered(result):
    by_id = {v["sample_id"]: v for v in result["per_video"]}
    gt = by_id["gt"]
    assert gt["num_success"] == 1
    # summed over 8 frames: well under a degree per frame, translations within a few % of the path
    assert gt["RotErr"] < 0.1 and gt["TransErr"] < 0.5 and gt["CamMC"] < 0.6
    shuffled = by_id["shuffled"]
    if shuffled["num_success"]:
        assert shuffled["TransErr"] > 4 * gt["TransErr"] and shuffled["RotErr"] > 3 * gt["RotErr"]


def test_blank_video_fails_and_is_counted_not_dropped(result):
    by_id = {v["sample_id"]: v for v in result["per_video"]}
    assert [v["sample_id"] for v in result["per_video"]] == ["blank", "gt", "shuffled"]
    blank = by_id["blank"]
    assert blank["num_success"] == 0 and blank["RotErr"] is None
    assert blank["trials"][0]["reason"]
    s = result["summary"]
    assert s["num_videos"] == 3 and s["num_videos_failed"] >= 1
    assert s["video_failure_rate"] >= 1 / 3 and s["trial_failure_rate"] >= 1 / 3


def test_interrupted_run_resumes_from_the_cache(samples, result, monkeypatch):
    def no_sfm(*args, **kwargs):
        raise AssertionError("a cached video was evaluated again")

    monkeypatch.setattr(camera_accuracy, "evaluate_video", no_sfm)
    config = CameraAccuracyConfig(trials=1, progress=False, cache_dir=str(samples / "cache"))
    again = evaluate_camera_accuracy(_jobs(samples), config)
    assert again == result
    # different options are a different cache entry
    other = CameraAccuracyConfig(trials=1, progress=False, cache_dir=str(samples / "cache"),
                                 sfm=SfmOptions(max_epipolar_error=2.0))
    with pytest.raises(AssertionError, match="evaluated again"):
        evaluate_camera_accuracy(_jobs(samples)[:1], other)


def test_options_are_validated():
    with pytest.raises(ValueError, match="matcher"):
        SfmOptions(matcher="vocab")
    with pytest.raises(ValueError, match="mapper"):
        SfmOptions(mapper="hierarchical")
    with pytest.raises(ValueError, match="trials"):
        CameraAccuracyConfig(trials=0).seeds()


@pytest.mark.slow
def test_parallel_workers_match_serial(samples, result):
    config = CameraAccuracyConfig(trials=1, progress=False, workers=2)
    parallel = evaluate_camera_accuracy(_jobs(samples), config)
    assert [v["num_success"] for v in parallel["per_video"]] == [v["num_success"] for v in result["per_video"]]
