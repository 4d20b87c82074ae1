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


def _rendered():
    from camvid.data.synthetic import default_intrinsics, make_scene, make_trajectory, render_frames

    K = default_intrinsics(H, W)
    c2w = make_trajectory("forward", T, 0)
    video, _ = render_frames(make_scene(0), K, c2w, H, W)
    return video, K, c2w


def test_first_frame_leaves_an_unmatchable_first_frame_out(tmp_path):
    # the tiny world's failure mode: frame 0 cannot be matched with the others (there: a sharp
    # conditioning frame before blurred ones; here: noise), so no trial registers every frame
    video, K, c2w = _rendered()
    video = video.copy()
    video[0] = np.random.default_rng(0).integers(0, 256, video[0].shape, dtype=np.uint8)
    write_sample(tmp_path, "noisy0", video, K, c2w, "a room", 0)
    every = evaluate_camera_accuracy(_jobs(tmp_path), CameraAccuracyConfig(trials=1, progress=False))
    assert every["per_video"][0]["num_success"] == 0
    assert every["per_video"][0]["trials"][0]["registered"] == T - 1

    config = CameraAccuracyConfig(trials=1, progress=False, first_frame=1, cache_dir=str(tmp_path / "cache"))
    jobs = [VideoJob(r.sample_id, str(r.video_path), r.K[0], r.c2w, first_frame=1) for r in read_samples(tmp_path)]
    later = evaluate_camera_accuracy(jobs, config)["per_video"][0]
    assert later["num_success"] == 1 and later["first_frame"] == 1 and later["num_frames"] == T - 1
    # the errors are against the requested poses of frames 1..T-1: as small as on the whole clean clip
    assert later["RotErr"] < 0.1 and later["TransErr"] < 0.5
    assert np.asarray(later["trials"][0]["c2w"]).shape == (T - 1, 4, 4)
    # first_frame is part of the cache key: the same video from frame 0 is evaluated again
    again = evaluate_camera_accuracy(_jobs(tmp_path), CameraAccuracyConfig(
        trials=1, progress=False, cache_dir=str(tmp_path / "cache")))
    assert again["per_video"][0]["num_success"] == 0


def test_first_frame_is_validated_and_too_few_frames_fail_the_video(tmp_path):
    with pytest.raises(ValueError, match="first_frame"):
        CameraAccuracyConfig(first_frame=-1)
    with pytest.raises(ValueError, match="first_frame"):
        CameraAccuracyConfig(first_frame=1.5)
    video, K, c2w = _rendered()
    write_sample(tmp_path, "short", video, K, c2w, "a room", 0)
    jobs = [VideoJob(r.sample_id, str(r.video_path), r.K[0], r.c2w, first_frame=T - 2) for r in read_samples(tmp_path)]
    result = evaluate_camera_accuracy(jobs, CameraAccuracyConfig(trials=2, progress=False, first_frame=T - 2))
    video_result = result["per_video"][0]
    assert video_result["num_success"] == 0 and result["summary"]["num_videos_failed"] == 1
    assert "fewer than 3 frames" in video_result["trials"][0]["reason"]


def test_peak_threshold_finds_keypoints_in_low_contrast_frames():
    from camvid.evaluation.sfm import run_sfm

    video, K, c2w = _rendered()
    # a tenth of the contrast: COLMAP's default SIFT threshold finds too few keypoints to map
    low = (128 + (video.astype(np.float32) - 128) * 0.1).round().astype(np.uint8)
    default = run_sfm(low, K, [0], SfmOptions())[0]
    assert not default.success
    lowered = run_sfm(low, K, [0], SfmOptions(peak_threshold=0.002))[0]
    assert lowered.success and lowered.num_registered == T
    from camvid.evaluation.pose_metrics import camera_errors

    # a tenth of the contrast costs accuracy (0.17 rad summed over 8 frames here), not the recovery
    assert camera_errors(lowered.c2w, c2w)["RotErr"] < 0.5
    for bad in (0, -0.01, 1.0, float("nan")):
        with pytest.raises(ValueError, match="peak_threshold"):
            SfmOptions(peak_threshold=bad)


def test_wrong_trajectory_errors_score_recovered_cameras_against_other_trajectories():
    from camvid.data.synthetic import make_trajectory
    from camvid.evaluation.camera_accuracy import wrong_trajectory_errors
    from camvid.evaluation.pose_metrics import camera_errors

    kinds = ["forward", "orbit", "truck", "mixed"]
    gt = {k: make_trajectory(k, T, i) for i, k in enumerate(kinds)}

    def video(sid, c2w, first=0, success=True):
        trial = {"seed": 0, "success": success, "registered": T - first, "reason": None}
        if success:
            trial["c2w"] = np.asarray(c2w)[first:].tolist()
        return {"sample_id": sid, "first_frame": first, "trials": [trial]}

    # every video recovered exactly: its own errors are 0, the wrong trajectories' are not
    per_video = [video(k, gt[k]) for k in kinds]
    wrong = wrong_trajectory_errors(per_video, gt)
    assert wrong["num_videos"] == 4
    expected = np.mean([np.mean([camera_errors(gt[a], gt[b])["RotErr"] for b in kinds if b != a]) for a in kinds])
    assert wrong["RotErr"] == pytest.approx(expected) and wrong["RotErr"] > 0.1 and wrong["TransErr"] > 0.1
    # max_others: the next video only (cyclic)
    nxt = wrong_trajectory_errors(per_video, gt, max_others=1)
    expected = np.mean([camera_errors(gt[a], gt[kinds[(i + 1) % 4]])["TransErr"] for i, a in enumerate(kinds)])
    assert nxt["TransErr"] == pytest.approx(expected)
    # first_frame: the other trajectories are cut alike
    cut = wrong_trajectory_errors([video(k, gt[k], first=1) for k in kinds], gt)
    expected = np.mean([np.mean([camera_errors(gt[a][1:], gt[b][1:])["CamMC"] for b in kinds if b != a])
                        for a in kinds])
    assert cut["CamMC"] == pytest.approx(expected)
    # a failed video adds nothing; one video alone, or only other lengths, give None
    failed = wrong_trajectory_errors([video("forward", gt["forward"], success=False), per_video[1]], gt)
    assert failed["num_videos"] == 1
    # a video without requested poses (an unusable one, counted as failed) is no reference
    unusable = {"sample_id": "broken", "first_frame": 0, "trials": [{"seed": None, "success": False}]}
    assert wrong_trajectory_errors([per_video[0], unusable, per_video[1]], gt)["num_videos"] == 2
    alone = wrong_trajectory_errors(per_video[:1], gt)
    assert alone["RotErr"] is None and alone["num_videos"] == 0
    longer = dict(gt, orbit=make_trajectory("orbit", T + 2, 1))
    other_len = wrong_trajectory_errors([per_video[0], video("orbit", longer["orbit"])], longer)
    assert other_len["num_videos"] == 0
