"""The camera-following metric: exact warps, and the references ordered as they must be on rendered clips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camvid.data import synthetic as syn
from camvid.evaluation.camera_following import (
    masked_scores,
    paired_margin,
    score_video,
    score_videos,
    warp_to_camera,
)
from conftest import load_benchmark


def test_plane_translation_is_an_exact_pixel_shift():
    """A fronto-parallel plane at z=4 seen by f=32: moving the camera 0.25 m right shifts the image
    2 pixels left; the uncovered 2 columns are masked out, the rest match exactly."""
    H = W = 16
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
    depth = np.full((H, W), 4.0, dtype=np.float32)
    K = np.array([[32.0, 0, W / 2], [0, 32.0, H / 2], [0, 0, 1]])
    src, dst = np.eye(4), np.eye(4)
    dst[0, 3] = 0.25
    warped, mask = warp_to_camera(image, depth, K, src, K, dst)
    assert mask[:, : W - 2].all() and not mask[:, W - 2 :].any()
    np.testing.assert_allclose(warped[:, : W - 2], image[:, 2:], atol=1e-5)
    psnr, l1 = masked_scores(warped, np.roll(image, -2, axis=1), mask)
    assert psnr == 100.0 and l1 < 1e-6


def test_occluded_pixels_are_not_compared():
    """A near square in front of a far wall: a sideways move reveals wall behind the square, which the
    conditioning view never saw; those pixels must be masked, the visible ones kept."""
    H = W = 24
    depth = np.full((H, W), 8.0, dtype=np.float32)
    depth[8:16, 8:16] = 2.0
    image = np.zeros((H, W, 3), dtype=np.float32)
    image[8:16, 8:16] = 1.0
    K = np.array([[24.0, 0, W / 2], [0, 24.0, H / 2], [0, 0, 1]])
    dst = np.eye(4)
    dst[0, 3] = 0.5  # the square shifts 6 px, the wall 1.5 px
    warped, mask = warp_to_camera(image, depth, K, np.eye(4), K, dst)
    assert 0.5 < mask.mean() < 1.0
    # wherever the warp shows the square, it is where the square truly moved (columns 2..9)
    square = mask & (warped[..., 0] > 0.5)
    cols = np.nonzero(square.any(0))[0]
    assert cols.min() >= 2 and cols.max() <= 9
    # the revealed strip right of the moved square (wall never seen by the source) is masked
    assert not mask[10:14, 10:13].any()


@pytest.fixture(scope="module")
def rendered():
    """Three rendered clips (different rooms and trajectory kinds), 32x32, 5 frames 8 apart, exact depth."""
    clips = []
    for seed, kind in ((2, "pan"), (3, "forward"), (4, "truck")):
        scene = syn.make_scene(seed, texture_size=64)
        c2w = syn.make_trajectory(kind, 40, seed)[::8]
        K = syn.default_intrinsics(32, 32, 60.0)
        frames, depth = syn.render_frames(scene, K, c2w, 32, 32)
        clips.append((frames, depth[0], np.broadcast_to(K, (len(c2w), 3, 3)).copy(), c2w))
    return clips


def test_gt_scores_far_above_static_and_wrong_trajectory(rendered):
    gts = [c[0] for c in rendered]
    rows = score_videos(gts, gts, [c[1] for c in rendered], [c[2] for c in rendered], [c[3] for c in rendered])
    for row in rows:
        gt, static, wrong = row["gt"]["psnr"], row["static"]["psnr"], row["wrong_trajectory"]["psnr"]
        assert gt > 27.0, row
        assert gt > static + 5.0 and gt > wrong + 5.0, row
        assert row["gt"]["l1"] < row["static"]["l1"] and row["gt"]["l1"] < row["wrong_trajectory"]["l1"]
        assert row["first_frame_psnr"] == 100.0  # the GT video's frame 0 is the conditioning image
        assert row["gt"]["psnr_per_frame"][0] == 100.0 and len(row["gt"]["psnr_per_frame"]) == 5


def test_gt_wrong_trajectory_reference_and_paired_margins(rendered):
    gts = [c[0] for c in rendered]
    depths, Ks, c2ws = [c[1] for c in rendered], [c[2] for c in rendered], [c[3] for c in rendered]
    rows = score_videos(gts, gts, depths, Ks, c2ws)
    for row in rows:  # the GT video is the generated one here: both wrong-trajectory scores agree
        assert row["gt_wrong_trajectory"]["psnr"] == pytest.approx(row["wrong_trajectory"]["psnr"])
    margin = paired_margin(rows, "gt", "gt_wrong_trajectory")
    diffs = [r["gt"]["psnr"] - r["gt_wrong_trajectory"]["psnr"] for r in rows]
    assert margin["n"] == 3 and margin["wins"] == 3 and margin["mean"] > 5.0
    assert margin["mean"] == pytest.approx(np.mean(diffs))
    assert margin["se"] == pytest.approx(np.std(diffs, ddof=1) / math.sqrt(3))
    # a still "generated" video: it scores exactly the static reference, so its margin over it is 0 and
    # it never wins; its margin over the other trajectories is small against the GT's
    still = [np.repeat(g[:1], len(g), axis=0) for g in gts]
    rows = score_videos(still, gts, depths, Ks, c2ws)
    assert paired_margin(rows, "generated", "static") == {"mean": 0.0, "se": 0.0, "wins": 0, "n": 3}
    assert abs(paired_margin(rows, "generated", "wrong_trajectory")["mean"]) < margin["mean"] / 3
    # videos without a finite score on either side are left out; none at all gives None
    rows[0]["generated"]["psnr"] = math.nan
    assert paired_margin(rows, "generated", "static")["n"] == 2
    assert paired_margin([{"generated": {"psnr": 20.0}}], "generated", "static") is None


def test_frames_without_overlap_are_left_out(rendered):
    frames, depth, K, c2w = rendered[0]
    away = c2w.copy()
    away[1:, :3, 3] += np.array([0.0, 0.0, -50.0])  # far behind the room: nothing co-visible
    score = score_video(frames, frames[0], depth, K, away)
    assert all(math.isnan(p) for p in score.psnr[1:]) and math.isnan(score.mean_psnr)


def test_bad_inputs_name_the_problem(rendered):
    frames, depth, K, c2w = rendered[0]
    with pytest.raises(ValueError, match="depth"):
        score_video(frames, frames[0], depth[:-1], K, c2w)
    with pytest.raises(ValueError, match="poses"):
        score_video(frames, frames[0], depth, K, c2w[:-1])


def test_sfm_upscale_scales_intrinsics_with_the_pixels():
    from camvid.evaluation.sfm import SfmOptions, upscale_frames

    frames = np.random.default_rng(0).integers(0, 255, (2, 8, 10, 3), dtype=np.uint8)
    K = np.array([[12.0, 0, 5.0], [0, 11.0, 4.0], [0, 0, 1]])
    big, K4 = upscale_frames(frames, K, 4)
    assert big.shape == (2, 32, 40, 3)
    point = np.array([0.3, -0.2, 2.0])
    small_px, big_px = K @ point, K4 @ point
    np.testing.assert_allclose(big_px[:2] / big_px[2], 4 * small_px[:2] / small_px[2])
    with pytest.raises(ValueError, match="upscale"):
        SfmOptions(upscale=0)


def test_by_kind_breakdown_script(tmp_path):
    """benchmarks/camera_following_by_kind.py: per kind and per half of the move sizes, from the per-video
    details and the pose files' URL lines; a sample without a pose file is named."""
    import json

    mod = load_benchmark("camera_following_by_kind")

    def video(gen, wrong, still, gt):
        return {"generated": {"psnr": gen}, "wrong_trajectory": {"psnr": wrong}, "static": {"psnr": still},
                "gt": {"psnr": gt}, "gt_wrong_trajectory": {"psnr": gt - 5.0}}

    per_video = [dict(video(22.0, 20.0, 21.0, 24.0), sample_id="a"),   # pan, small move, followed
                 dict(video(21.0, 22.0, 19.0, 27.0), sample_id="b")]   # truck, large move, not followed
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "camera_following_per_video.json").write_text(json.dumps(per_video))
    (tmp_path / "data" / "test").mkdir(parents=True)
    for sid, kind in (("a", "pan"), ("b", "truck")):
        (tmp_path / "data" / "test" / f"{sid}.txt").write_text(f"synthetic://camvid/scene/7/{kind}/128\n0 1 1\n")
    out = mod.main([str(tmp_path / "eval"), str(tmp_path / "data")]).splitlines()
    assert "| pan | +2.00 (1/1) | +1.00 (1/1) | +5.00 (1/1) | +3.00 (1/1) |" in out
    assert "| truck | -1.00 (0/1) | +2.00 (1/1) | +5.00 (1/1) | +8.00 (1/1) |" in out
    assert "| smaller moves (1) | +2.00 (1/1) |" in "\n".join(out) and "| larger moves (1) | -1.00 (0/1) |" in "\n".join(out)
    assert "| all (2) | +0.50 (1/2) | +1.50 (2/2) |" in "\n".join(out)
    (tmp_path / "data" / "test" / "b.txt").unlink()
    with pytest.raises(FileNotFoundError, match="b.txt: no pose file for sample b"):
        mod.main([str(tmp_path / "eval"), str(tmp_path / "data")])


def test_direction_table_tells_a_right_a_mirrored_and_a_still_move(rendered, tmp_path):
    """benchmarks/camera_following_by_kind.py --samples: the GT video scores best on its own trajectory
    (not mirrored, reversed or no move); a video that moves the mirrored way scores best mirrored; a still
    video scores best on no move."""

    from camvid.evaluation.camera_following import DEPTH_FILE
    from camvid.evaluation.layout import write_sample

    mod = load_benchmark("camera_following_by_kind")
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    for frames, depth, K, c2w in rendered:
        gt = mod.direction_scores(frames, frames[0], depth, K, c2w)
        assert gt["own"] > max(gt["mirrored"], gt["reversed"], gt["no move"]) + 3.0, gt
        still = mod.direction_scores(np.repeat(frames[:1], len(frames), 0), frames[0], depth, K, c2w)
        assert still["no move"] == 100.0 and still["no move"] > still["own"] + 3.0, still
    # the truck clip rendered along its mirror image: its video moves the other way
    scene_frames, depth, K, c2w = rendered[2]
    rel = np.linalg.inv(c2w[0]) @ c2w
    mirrored = c2w[0] @ (mirror @ rel @ mirror)
    frames, _ = syn.render_frames(syn.make_scene(4, texture_size=64), K[0], mirrored, 32, 32)
    assert np.array_equal(frames[0], scene_frames[0])
    wrong_way = mod.direction_scores(frames, frames[0], depth, K, c2w)
    assert wrong_way["mirrored"] > max(wrong_way["own"], wrong_way["no move"]) + 3.0, wrong_way

    # the table over sample folders: kinds from the pose files, the GT row and a generated row per kind
    samples, data = tmp_path / "samples", tmp_path / "data" / "test"
    data.mkdir(parents=True)
    for i, ((frames, depth, K, c2w), kind) in enumerate(zip(rendered, ("pan", "forward", "truck"))):
        folder = write_sample(samples, f"s{i}", np.repeat(frames[:1], len(frames), 0), K, c2w, "", 0, gt_video=frames)
        np.save(folder / DEPTH_FILE, depth)
        (data / f"s{i}.txt").write_text(f"synthetic://camvid/scene/{i}/{kind}/128\n")
    kinds = {f"s{i}": k for i, k in enumerate(("pan", "forward", "truck"))}
    lines = mod.direction_table(samples, kinds).splitlines()
    assert lines[0].startswith("| clips | generated: own | generated: mirrored |") and len(lines) == 2 + 3 + 1
    pan = next(x for x in lines if x.startswith("| pan |")).split("|")[2:-1]
    gen_own, gen_no_move, gt_own, gt_mirrored = float(pan[0]), float(pan[3]), float(pan[4]), float(pan[5])
    assert gen_no_move > gen_own and gt_own > gt_mirrored  # the still video stays, the GT moves its own way
    assert pan[-2].strip() == "0/1"  # a still video never scores best on its own trajectory: no move wins
    assert lines[-1].startswith("| all (3) |")


def test_vs_row_script_pairs_each_video_with_the_reference_row(tmp_path):
    """benchmarks/camera_following_vs_row.py: per seed, the per-video margin differences against the
    reference row (a reference with one seed serves every seed); a job without the per-video file is named."""
    import json

    mod = load_benchmark("camera_following_vs_row")

    def job(preset, seed, margins):
        out = tmp_path / preset / f"seed_{seed}" / "samples" / "eval"
        out.mkdir(parents=True)
        rows = [{"sample_id": f"v{i}", "generated": {"psnr": 20.0 + m}, "wrong_trajectory": {"psnr": 20.0}}
                for i, m in enumerate(margins)]
        (out / "camera_following_per_video.json").write_text(json.dumps(rows))

    job("none", 1, [0.0, 0.1, -0.1, 0.0])
    job("cam", 1, [0.5, 0.1, 0.3, -0.2])   # differences 0.5, 0.0, 0.4, -0.2: mean 0.175, 2 ahead
    job("cam", 2, [0.2, 0.3, 0.1, 0.2])    # differences 0.2, 0.2, 0.2, 0.2 against seed 1 of "none"
    rows = mod.compare(tmp_path, "none", ["cam"])
    s1, s2 = rows[0]["seeds"]
    assert s1["mean"] == pytest.approx(0.175) and s1["wins"] == 2 and s1["n"] == 4
    assert s1["se"] == pytest.approx(np.std([0.5, 0.0, 0.4, -0.2], ddof=1) / 2)
    assert s2["mean"] == pytest.approx(0.2) and s2["se"] == pytest.approx(0.0) and s2["wins"] == 4
    assert rows[0]["mean"] == pytest.approx(0.1875) and rows[0]["std"] == pytest.approx(np.std([0.175, 0.2], ddof=1))
    assert "| cam | +0.19 ± 0.02 | +0.18 ± 0.17 (2/4), +0.20 ± 0.00 (4/4) |" in mod.main([str(tmp_path), "none", "cam"])
    with pytest.raises(FileNotFoundError, match="nope: no evaluated seed_"):
        mod.compare(tmp_path, "none", ["nope"])
    (tmp_path / "cam" / "seed_3" / "checkpoints").mkdir(parents=True)  # a job still training: named, left out
    assert "(4/4); not evaluated yet: seed 3 |" in mod.main([str(tmp_path), "none", "cam"])
