"""Synthetic writer -> shards -> loader: exact round trips, intrinsics, DDP split, resume, pairs."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camvid.data.batches import normalize_video, to_device
from camvid.data.clips import resize_crop_video
from camvid.data.layout import list_re10k_clips
from camvid.data.loader import (
    ClipStream,
    Re10kDirectoryDataset,
    WebVidDirectoryDataset,
    build_dataloader,
    build_synthetic_dataloader,
    resolve_units,
)
from camvid.data.samples import SampleSpec, collate
from camvid.data.shards import iter_tar_samples, read_manifest, write_re10k_shards, write_webvid_shards
from camvid.data.synthetic import (
    default_intrinsics,
    describe_clip,
    make_scene,
    make_trajectory,
    render_frames,
)
from camvid.data.synthetic_writer import write_synthetic_re10k, write_synthetic_webvid
from camvid.geometry.cameras import read_pose_file

T, H, W = 12, 24, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_re10k(root, num_clips=6, num_frames=T, height=H, width=W, seed=3, test_every=3, texture_size=64)
    write_synthetic_webvid(root / "webvid", num_clips=3, num_frames=10, height=H, width=W, seed=3)
    shards = root / "shards"
    write_re10k_shards(root, "train", shards / "train", shard_size=2, with_depth=True)
    write_re10k_shards(root, "test", shards / "test", shard_size=1)
    write_webvid_shards(root / "webvid", shards / "webvid", shard_size=1, image_format="png")
    return root


def _scene_of(pose_path: Path):
    """Rebuild the renderer inputs recorded in the synthetic pose file's URL line."""
    seed, kind, tex = read_pose_file(pose_path).url.rsplit("/", 3)[1:]
    return make_scene(int(seed), int(tex)), kind, int(seed)


def test_writer_layout_is_realestate10k_and_deterministic(data, tmp_path):
    train = list_re10k_clips(data, "train")
    test = list_re10k_clips(data, "test")
    assert len(train) == 4 and len(test) == 2
    captions = json.loads((data / "captions.json").read_text())
    assert set(captions) == {c.clip_id for c in train + test}
    clip = train[0]
    track = read_pose_file(clip.pose_path)
    assert len(track) == T and sorted(p.name for p in clip.frame_dir.iterdir())[0] == "00000.png"
    np.testing.assert_allclose(track.timestamps, np.arange(T) * 33_333)
    depth = np.load(clip.depth_path)
    assert depth.shape == (T, H, W) and depth.dtype == np.float16
    scene, kind, seed = _scene_of(clip.pose_path)
    assert captions[clip.clip_id] == describe_clip(scene, kind)
    # Pose file <-> renderer: w2c in the file is the inverse of the trajectory, K is normalised.
    c2w = make_trajectory(kind, T, seed)
    np.testing.assert_allclose(track.c2w(), c2w, atol=2e-6)
    fx = track.intrinsics[0, 0] * W
    frames, depth_r = render_frames(scene, default_intrinsics(H, W, np.rad2deg(2 * np.arctan(W / (2 * fx)))), c2w, H, W)
    np.testing.assert_array_equal(np.asarray(Image.open(clip.frame_dir / "00005.png")), frames[5])
    np.testing.assert_allclose(depth, depth_r, rtol=1e-3)
    # Same seed, same bytes.
    write_synthetic_re10k(tmp_path, num_clips=1, num_frames=T, height=H, width=W, seed=3, texture_size=64)
    assert (tmp_path / "train" / f"{clip.clip_id}.txt").read_bytes() == clip.pose_path.read_bytes()
    assert (tmp_path / "train" / "frames" / clip.clip_id / "00007.png").read_bytes() == (
        clip.frame_dir / "00007.png").read_bytes()


def test_shards_hold_one_sample_per_clip(data):
    manifest = read_manifest(data / "shards" / "train")
    assert manifest["num_samples"] == 4 and [s["count"] for s in manifest["shards"]] == [2, 2]
    sample = next(iter_tar_samples(str(data / "shards" / "train" / "shard-000000.tar")))
    fields = set(sample) - {"__key__", "__url__", "__local_path__"}
    assert {"pose.txt", "txt", "json", "depth.npy", "00000.png", f"{T - 1:05d}.png"} <= fields
    assert len([f for f in fields if f.endswith(".png")]) == T
    assert read_manifest(data / "shards" / "webvid")["num_samples"] == 3


def test_shards_round_trip_frames_and_poses_exactly(data):
    loader = build_dataloader(str(data / "shards" / "test"), split="test", num_frames=T, height=H, width=W,
                              stride_min=1, stride_max=1, batch_size=1, train=False)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        clip = next(c for c in list_re10k_clips(data, "test") if c.clip_id == batch["key"][0])
        on_disk = np.stack([np.asarray(Image.open(clip.frame_dir / f"{t:05d}.png")) for t in range(T)])
        # streams ship uint8; the exact bytes on disk come out
        np.testing.assert_array_equal(batch["video"][0].permute(0, 2, 3, 1).numpy(), on_disk)
        assert batch["video"].shape == (1, T, 3, H, W) and batch["video"].dtype == torch.uint8
        assert batch["cond_index"].tolist() == [0] and batch["frame_stride"].tolist() == [1]
        _, kind, seed = _scene_of(clip.pose_path)
        c2w = make_trajectory(kind, T, seed)
        rel = np.linalg.inv(c2w[0]) @ c2w
        np.testing.assert_allclose(batch["c2w"][0].double().numpy(), rel, atol=1e-5)
        track = read_pose_file(clip.pose_path)
        K = np.diag([track.intrinsics[0, 0] * W, track.intrinsics[0, 1] * H, 1.0])
        K[0, 2], K[1, 2] = W / 2, H / 2
        np.testing.assert_allclose(batch["K"][0].numpy(), np.broadcast_to(K, (T, 3, 3)), rtol=1e-6)
    # The plain directory data set yields the same sample.
    ds = Re10kDirectoryDataset(data, "test", num_frames=T, height=H, width=W, stride_min=1, stride_max=1)
    direct = collate([ds[0]])
    by_key = {b["key"][0]: b for b in batches}[direct["key"][0]]
    assert direct["video"].dtype == torch.float32  # map-style data sets return [-1, 1]
    torch.testing.assert_close(direct["video"], to_device(by_key, "cpu")["video"])
    for name in ("K", "c2w", "frame_indices"):
        torch.testing.assert_close(direct[name], by_key[name])


def test_intrinsics_follow_short_side_resize_and_centre_crop(data):
    out_h, out_w = 16, 16
    ds = Re10kDirectoryDataset(data, "test", num_frames=3, height=out_h, width=out_w, stride_min=4, stride_max=4)
    sample = ds[0]
    clip = list_re10k_clips(data, "test")[0]
    track = read_pose_file(clip.pose_path)
    fx, fy, cx, cy = track.intrinsics[0] * [W, H, W, H]
    # 24x32 -> scale 2/3 -> resized 16 x round(21.33) = 16x21 -> centre crop 2 columns from the left.
    sx, sy, left = 21 / 32, 16 / 24, 2
    expected = np.array([[fx * sx, 0, cx * sx - left], [0, fy * sy, cy * sy], [0, 0, 1]])
    np.testing.assert_allclose(sample["K"][0].double().numpy(), expected, rtol=1e-6)
    # The K describes the image: a direct render with it matches the resized frames far better
    # than a render whose principal point is off by two pixels.
    scene, kind, seed = _scene_of(clip.pose_path)
    c2w = make_trajectory(kind, T, seed)[sample["frame_indices"].numpy()]
    got = sample["video"]
    err = {}
    for shift in (0.0, 2.0):
        K = expected.copy()
        K[0, 2] += shift
        ref, _ = render_frames(scene, K, c2w, out_h, out_w)
        err[shift] = (normalize_video(resize_crop_video(ref, (out_h, out_w))) - got).abs().mean().item()
    assert err[0.0] < 0.6 * err[2.0]


def test_training_samples_random_stride_window_and_conditioning_frame(data):
    loader = build_dataloader(str(data / "shards" / "train"), num_frames=4, height=H, width=W, batch_size=2,
                              epoch_length=12, seed=5)
    strides, conds = set(), set()
    for batch in loader:
        idx = batch["frame_indices"]
        for b in range(2):
            s = int(batch["frame_stride"][b])
            assert 1 <= s <= (T - 1) // 3  # clamped so 4 frames fit in 12
            assert (idx[b].diff() == s).all()
            c = int(batch["cond_index"][b])
            torch.testing.assert_close(batch["c2w"][b, c], torch.eye(4), atol=1e-6, rtol=0)
            strides.add(s)
            conds.add(c)
        assert batch["video"].dtype == torch.uint8
    assert len(strides) > 1 and len(conds) > 1


def test_resampled_stream_is_deterministic_per_seed_and_rank(data):
    def keys(**kw):
        loader = build_dataloader(str(data / "shards" / "train"), num_frames=3, height=8, width=8, batch_size=1,
                                  epoch_length=6, **kw)
        return [(b["key"][0], tuple(b["frame_indices"][0].tolist())) for b in loader]

    first = keys(seed=1, rank=0, world_size=2)
    assert first == keys(seed=1, rank=0, world_size=2)
    assert first != keys(seed=1, rank=1, world_size=2)
    assert first != keys(seed=2, rank=0, world_size=2)


def test_ddp_ranks_and_workers_see_disjoint_samples(data, monkeypatch):
    root = str(data / "shards" / "train")
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = build_dataloader(root, num_frames=3, height=8, width=8, batch_size=1, train=False)
        seen.append({b["key"][0] for b in loader})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == {c.clip_id for c in list_re10k_clips(data, "train")}
    # Worker split inside one rank (directory units: one clip each).
    kind, units = resolve_units(data, "train")
    stream = ClipStream(units, kind, SampleSpec(3, 8, 8, 1, 1, train=False), resampled=False, rank=0, world_size=1)
    per_worker = [{b["key"][0] for b in stream.iter_worker(w, 2)} for w in range(2)]
    assert not per_worker[0] & per_worker[1] and len(per_worker[0] | per_worker[1]) == 4


def test_skip_batches_resumes_the_same_stream(data):
    def run(skip, num_workers=0):
        loader = build_dataloader(str(data / "shards" / "train"), num_frames=3, height=8, width=8, batch_size=2,
                                  epoch_length=5, seed=9, epoch=1, skip_batches=skip, num_workers=num_workers)
        return [(tuple(b["key"]), b["video"]) for b in loader]

    assert run(5) == [] and run(7) == []  # resuming at (or past) the end of the epoch
    for workers in (0, 2):
        full, resumed = run(0, workers), run(3, workers)
        assert len(full) == 5 and len(resumed) == 2
        for (k1, v1), (k2, v2) in zip(full[3:], resumed):
            assert k1 == k2
            torch.testing.assert_close(v1, v2)


def test_fold_pairs_share_their_first_frame(data):
    loader = build_dataloader(str(data / "shards" / "train"), pairing="re10k_fold", num_frames=4, height=H,
                              width=W, batch_size=2, epoch_length=3, seed=2)
    for batch in loader:
        assert batch["num_views"] == 2 and batch["video"].shape == (4, 4, 3, H, W)
        assert [k[-2:] for k in batch["key"]] == [":a", ":b", ":a", ":b"]
        a, b = batch["video"][0::2], batch["video"][1::2]
        torch.testing.assert_close(a[:, 0], b[:, 0], atol=0, rtol=0)
        assert (batch["cond_index"] == 0).all()
        torch.testing.assert_close(batch["c2w"][:, 0], torch.eye(4).expand(4, 4, 4), atol=1e-6, rtol=0)
        for p in range(2):
            ia, ib = batch["frame_indices"][2 * p], batch["frame_indices"][2 * p + 1]
            s = int(batch["frame_stride"][2 * p])
            assert ia[0] == ib[0] and (ia.diff() == s).all() and (ib.diff() == -s).all()
            assert s <= (T - 1) // 6  # 2 * 4 - 1 = 7 frames must fit in 12
            clip = next(c for c in list_re10k_clips(data, "train") if c.clip_id == batch["key"][2 * p][:-2])
            c2w = read_pose_file(clip.pose_path).c2w()
            expected_b = np.linalg.inv(c2w[int(ib[0])]) @ c2w[ib.numpy()]
            np.testing.assert_allclose(batch["c2w"][2 * p + 1].double().numpy(), expected_b, atol=1e-5)


def test_homography_pairs_warp_the_second_video(data):
    from camvid.geometry.homography import warp_images

    loader = build_dataloader(str(data / "shards" / "webvid"), pairing="webvid_homography", num_frames=5,
                              height=16, width=16, batch_size=2, epoch_length=2, homography_strength=2.0)
    for batch in loader:
        Hs = batch["homography"]
        assert Hs.shape == (4, 5, 3, 3)
        torch.testing.assert_close(Hs[0::2], torch.eye(3).expand(2, 5, 3, 3))
        torch.testing.assert_close(Hs[1::2][:, 0], torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)
        assert (Hs[1::2, -1] - torch.eye(3)).abs().max() > 1e-3
        a, b = batch["video"][0::2], batch["video"][1::2]
        torch.testing.assert_close(b[:, 0], a[:, 0], atol=0, rtol=0)
        expected = warp_images(a.float() / 255, Hs[1::2]) * 255
        assert (b.float() - expected).abs().max() <= 0.5 + 1e-3  # the warp, rounded to uint8
        torch.testing.assert_close(batch["c2w"], torch.eye(4).expand(4, 5, 4, 4))


def test_cvd_mix_is_seven_to_three_by_batch(data):
    loader = build_dataloader(str(data / "shards" / "train"), pairing="cvd_mix", webvid_root=str(data / "shards" / "webvid"),
                              num_frames=2, height=8, width=8, stride_max=2, batch_size=1, epoch_length=150, seed=4)
    sources = []
    for batch in loader:
        sources.append(batch["source"])
        assert ("homography" in batch) == (batch["source"] == "webvid_homography")
        assert batch["num_views"] == 2
    frac = sources.count("re10k_fold") / len(sources)
    assert len(sources) == 150 and 0.58 < frac < 0.82


def test_data_prep_scripts_and_synthetic_loader(tmp_path, capsys):
    repo = Path(__file__).resolve().parents[1]
    synth = runpy.run_path(str(repo / "data_prep" / "synthetic.py"))["main"]
    shards = runpy.run_path(str(repo / "data_prep" / "make_shards.py"))["main"]
    out = tmp_path / "syn"
    synth(["--out", str(out), "--num-clips", "3", "--num-frames", "6", "--height", "8", "--width", "8",
           "--texture-size", "32", "--test-every", "3", "--webvid", "--webvid-clips", "2"])
    assert len(list((out / "train").glob("*.txt"))) == 2 and len(list((out / "test").glob("*.txt"))) == 1
    assert (out / "webvid" / "webvid.csv").read_text().startswith("videoid,contentUrl,duration,page_dir,name")
    shards(["re10k", "--root", str(out), "--out", str(tmp_path / "s"), "--shard-size", "1", "--image-format", "jpg"])
    manifest = read_manifest(tmp_path / "s")
    assert manifest["num_samples"] == 2 and manifest["image_format"] == "jpg"
    assert "2 samples in 2 shards" in capsys.readouterr().out

    auto = tmp_path / "auto"
    loader = build_synthetic_dataloader(str(auto), num_clips=2, clip_frames=7, render_height=8, render_width=8,
                                        webvid_clips=1, texture_size=32, pairing="cvd_mix", num_frames=4,
                                        height=8, width=8, epoch_length=3)
    assert len(list(loader)) == 3 and (auto / "captions.json").is_file()


def test_webvid_mp4_and_frame_folders_agree(tmp_path):
    write_synthetic_webvid(tmp_path / "png", num_clips=1, num_frames=6, height=16, width=24, seed=2)
    write_synthetic_webvid(tmp_path / "mp4", num_clips=1, num_frames=6, height=16, width=24, seed=2, video_format="mp4")
    assert next((tmp_path / "mp4" / "videos").rglob("*.mp4")).is_file()
    samples = [WebVidDirectoryDataset(tmp_path / fmt, num_frames=4, height=16, width=24, stride_min=1,
                                      stride_max=1)[0] for fmt in ("png", "mp4")]
    assert samples[0]["video"].shape == (4, 3, 16, 24) and samples[0]["key"] == samples[1]["key"]
    assert (samples[0]["video"] - samples[1]["video"]).abs().mean() < 0.1  # mp4 is lossy
    torch.testing.assert_close(samples[0]["c2w"], torch.eye(4).expand(4, 4, 4))
    manifest = write_webvid_shards(tmp_path / "mp4", tmp_path / "shards")
    assert manifest["num_samples"] == 1 and manifest["image_format"] == "jpg"


def test_cvd_mix_resumes_with_skip_batches(data):
    def run(skip):
        loader = build_dataloader(str(data / "shards" / "train"), pairing="cvd_mix",
                                  webvid_root=str(data / "shards" / "webvid"), num_frames=2, height=8, width=8,
                                  stride_max=2, batch_size=1, epoch_length=8, seed=7, skip_batches=skip)
        return [(b["source"], tuple(b["key"]), b["video"]) for b in loader]

    full, resumed = run(0), run(5)
    assert len(resumed) == 3 and {s for s, _, _ in full} == {"re10k_fold", "webvid_homography"}
    for (s1, k1, v1), (s2, k2, v2) in zip(full[5:], resumed):
        assert (s1, k1) == (s2, k2)
        torch.testing.assert_close(v1, v2)
