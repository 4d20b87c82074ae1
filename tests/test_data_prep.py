"""data_prep/re10k.py and data_prep/webvid.py on small releases made from the synthetic renderer and
encoded to mp4: the summary counts every skipped clip by reason, frames land on their own pose rows,
a killed run resumes without writing anything twice, parts add up, and the shards train."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from camvid.data.loader import build_dataloader, resolve_units
from camvid.data.shards import read_manifest
from camvid.data.synthetic_writer import write_synthetic_re10k, write_synthetic_webvid
from camvid.geometry.cameras import format_pose_line, read_pose_file
from conftest import REPO

sys.path.insert(0, str(REPO / "data_prep"))
import re10k as re10k_prep  # noqa: E402
import webvid as webvid_prep  # noqa: E402

RENDERED, ROWS, FIRST = 18, 16, 1  # frames in each video; pose rows per clip, starting at video frame FIRST
H, W = 32, 48
JITTER_US = 4_000  # pose timestamps sit 4 ms after their frame: the nearest frame is still the right one


def _encode_mp4(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "8"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _release(root: Path) -> dict:
    """8 rendered clips as a RealEstate10K release (train: 0 1 2 4 5 6, test: 3 7) plus videos.
    Clip 0's video is missing, clip 1's is not a video, clip 4 has 3 pose rows, clip 5's timestamps
    lie 10 s past its video's end, clip 6 has no caption."""
    render = root / "render"
    write_synthetic_re10k(render, num_clips=8, num_frames=RENDERED, height=H, width=W, seed=5, test_every=4,
                          texture_size=32)
    release, videos = root / "release", root / "videos"
    captions, originals = {}, {}
    for split in ("train", "test"):
        (release / split).mkdir(parents=True)
        for pose in sorted((render / split).glob("*.txt")):
            i = int(pose.stem[-6:])
            track = read_pose_file(pose)
            frames = [np.asarray(Image.open(render / split / "frames" / pose.stem / f"{t:05d}.png"))
                      for t in range(RENDERED)]
            originals[pose.stem] = frames
            rows = range(FIRST, FIRST + (3 if i == 4 else ROWS))
            shift = 10_000_000 if i == 5 else 0
            lines = [f"https://www.youtube.com/watch?v=vid{i:02d}"] + [
                format_pose_line(t * 1_000_000 // 30 + JITTER_US + shift, track.intrinsics[t], track.w2c[t])
                for t in rows]
            (release / split / f"{pose.stem}.txt").write_text("\n".join(lines) + "\n")
            videos.mkdir(exist_ok=True)
            if i == 1:
                (videos / f"vid{i:02d}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
            elif i != 0:
                _encode_mp4(videos / f"vid{i:02d}.mp4", frames)
            if i != 6:
                captions[pose.stem] = f"caption of clip {i}"
    (root / "captions.json").write_text(json.dumps(captions))
    return originals


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--release", str(root / "release"), "--videos", str(root / "videos"), "--out", str(out),
            "--captions", str(root / "captions.json"), "--shard-size", "1", "--short-side", "0",
            "--min-frames", "8", *extra]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k_release")
    originals = _release(root)
    re10k_prep.main(_args(root, root / "shards"))
    return root, originals


def test_summary_counts_every_clip_by_reason(prepared):
    root, _ = prepared
    train = json.loads((root / "shards" / "train" / "part-0000" / "summary.json").read_text())
    assert train["clips"] == 6 and train["written"] == 2
    assert train["skipped"] == {"video_missing": 1, "undecodable": 1, "too_short": 1, "timestamps_out_of_range": 1}
    assert train["skipped_clips"]["video_missing"] == ["syn0005000000"]
    assert train["skipped_clips"]["timestamps_out_of_range"] == ["syn0005000005"]
    assert train["without_caption"] == 1  # clip 6
    assert 3.0 < train["timestamp_error_ms"]["max"] < 5.0  # the 4 ms jitter, reported
    total = json.loads((root / "shards" / "summary.json").read_text())
    assert total["written"] == 4 and total["skipped"] == 4
    assert total["splits"]["test"]["written"] == 2 and total["splits"]["test"]["skipped"] == {}
    manifest = read_manifest(root / "shards" / "train" / "part-0000")
    assert manifest["source"] == "re10k" and manifest["num_samples"] == 2 and len(manifest["shards"]) == 2


def test_frames_land_on_their_own_pose_rows(prepared):
    root, originals = prepared
    loader = build_dataloader(str(root / "shards"), split="train", num_frames=ROWS, height=H, width=W, stride_min=1,
                              stride_max=1, batch_size=1, train=False)
    batches = list(loader)
    assert sorted(b["key"][0] for b in batches) == ["syn0005000002", "syn0005000006"]
    for batch in batches:
        key = batch["key"][0]
        video = batch["video"][0].permute(0, 2, 3, 1).numpy().astype(np.float32)
        src = np.stack(originals[key]).astype(np.float32)
        for t in range(ROWS):
            err = [np.abs(video[t] - src[s]).mean() for s in range(RENDERED)]
            assert int(np.argmin(err)) == FIRST + t, f"{key} frame {t} matches video frame {np.argmin(err)}"
            assert err[FIRST + t] < 4.0  # lossy mp4 + JPEG, same frame
        # cameras are the pose rows of the release file, not identity
        assert not torch.allclose(batch["c2w"][0, 1], torch.eye(4), atol=1e-4)
        assert batch["caption"][0] == ("" if key.endswith("6") else f"caption of clip {int(key[-1])}")


def test_killed_prep_resumes_without_writing_anything_twice(prepared, tmp_path):
    root, _ = prepared
    out = tmp_path / "shards"
    # Kill the run hard after the second test shard's tar is published but before its record.
    code = (
        "import os, sys; sys.path.insert(0, {dp!r}); import camvid.data.prep as prep, re10k\n"
        "orig, calls = prep.write_json_atomic, []\n"
        "def killer(path, data):\n"
        "    if path.parent.name == 'done':\n"
        "        calls.append(path)\n"
        "        if len(calls) == 4: os._exit(137)\n"
        "    orig(path, data)\n"
        "prep.write_json_atomic = killer\n"
        "re10k.main({args!r})\n"
    ).format(dp=str(REPO / "data_prep"), args=_args(root, out))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 137, run.stderr
    train = out / "train" / "part-0000"
    assert not (train / "manifest.json").exists()  # the loader sees nothing of an unfinished part
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        resolve_units(out, "train")
    done_before = {p.name: p.stat().st_mtime_ns for p in (train / "done").glob("*.json")}
    tars_before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in train.glob("shard-*.tar")}
    assert len(done_before) == 3
    re10k_prep.main(_args(root, out))
    summary = json.loads((train / "summary.json").read_text())
    assert summary["shards_done_before"] == 3 and summary["shards_written_now"] == 3
    for name, (ino, mtime) in tars_before.items():
        rec = json.loads((train / "done" / name.replace(".tar", ".json")).read_text()) if (
            train / "done" / name.replace(".tar", ".json")).is_file() else None
        if rec is not None:  # finished before the kill: kept as it was
            assert (train / name).stat().st_ino == ino and (train / name).stat().st_mtime_ns == mtime
    for name, mtime in done_before.items():
        assert (train / "done" / name).stat().st_mtime_ns == mtime
    # the resumed result equals the uninterrupted one
    ref = root / "shards" / "train" / "part-0000"
    assert read_manifest(train)["shards"] == read_manifest(ref)["shards"]
    for entry in read_manifest(ref)["shards"]:
        assert (train / entry["name"]).read_bytes() == (ref / entry["name"]).read_bytes()


def test_parts_and_workers_add_up_to_the_whole(prepared, tmp_path):
    root, _ = prepared
    out = tmp_path / "parts"
    for part in range(2):
        re10k_prep.main(_args(root, out, "--part", str(part), "--num-parts", "2", "--workers", "2",
                              "--splits", "train"))
    total = json.loads((out / "summary.json").read_text())["splits"]["train"]
    assert total["parts"] == 2 and total["written"] == 2 and sum(total["skipped"].values()) == 4
    kind, refs = resolve_units(out, "train")
    assert kind == "shards" and sorted(Path(r.url).parent.name for r in refs) == ["part-0000", "part-0001"]


def test_bad_arguments_are_named(prepared, tmp_path):
    root, _ = prepared
    with pytest.raises(FileNotFoundError, match="--release: split folder not found: .*nowhere/train"):
        re10k_prep.main(["--release", str(tmp_path / "nowhere"), "--videos", str(root), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--part must be in"):
        re10k_prep.main(_args(root, tmp_path / "x", "--part", "2", "--num-parts", "2"))
    (tmp_path / "caps.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="--captions .*caps.json: expected a JSON object"):
        re10k_prep.main(_args(root, tmp_path / "x")[:-8] + ["--captions", str(tmp_path / "caps.json")])


@pytest.fixture(scope="module")
def webvid(tmp_path_factory):
    root = tmp_path_factory.mktemp("webvid_release")
    write_synthetic_webvid(root, num_clips=5, num_frames=RENDERED, height=H, width=W, seed=2, video_format="mp4")
    videos = sorted((root / "videos").rglob("*.mp4"))
    videos[0].unlink()  # missing
    videos[1].write_bytes(b"not a video" * 100)  # undecodable
    with (root / "webvid.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    rows[2]["name"] = ""  # no caption
    with (root / "webvid.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    webvid_prep.main(["--csv", str(root / "webvid.csv"), "--videos", str(root / "videos"), "--out",
                      str(root / "shards"), "--shard-size", "2", "--short-side", "0", "--min-frames", "8",
                      "--workers", "2"])
    return root


def test_webvid_prep_summary_and_shards(webvid):
    summary = json.loads((webvid / "shards" / "train" / "part-0000" / "summary.json").read_text())
    assert summary["clips"] == 5 and summary["written"] == 3
    assert summary["skipped"] == {"video_missing": 1, "undecodable": 1}
    assert summary["without_caption"] == 1
    loader = build_dataloader(str(webvid / "shards"), pairing="webvid_homography", num_frames=8, height=H, width=W,
                              batch_size=1, train=False)
    batches = list(loader)
    assert len(batches) == 3 and all(b["video"].shape == (2, 8, 3, H, W) for b in batches)
    with pytest.raises(ValueError, match="shards of source \\['webvid'\\] but this data config reads 're10k'"):
        build_dataloader(str(webvid / "shards"), num_frames=8, height=H, width=W)


@pytest.mark.parametrize("data,model,backbone", [("re10k", "cami2v", "tiny_dynamicrafter"),
                                                 ("re10k_fold", "cvd", "tiny_animatediff"),
                                                 ("webvid_homography", "cvd", "tiny_animatediff"),
                                                 ("cvd_mix", "cvd", "tiny_animatediff")])
def test_configs_train_from_prepared_shards(prepared, webvid, tmp_path, data, model, backbone):
    from camvid.training.loop import train
    from conftest import TINY, compose

    root, _ = prepared
    roots = {"re10k": root / "shards", "re10k_fold": root / "shards", "webvid_homography": webvid / "shards",
             "cvd_mix": root / "shards"}
    extra = [f"data.re10k_root={root / 'shards'}", f"data.webvid_root={webvid / 'shards'}"] if data == "cvd_mix" else []
    cfg = compose([*TINY, "debug=fast", f"model={model}", f"backbone={backbone}", f"data={data}",
                   f"data.root={roots[data]}", f"paths.output_dir={tmp_path}", "data.stride_train=[1,1]", *extra])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(cfg)
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    assert sum(summary["data_skipped"]["skipped"].values()) == 0


def test_evaluation_reads_the_prepared_test_split(prepared):
    from camvid.data.factory import build_eval_dataset
    from conftest import compose

    root, originals = prepared
    cfg = compose(["data=re10k", f"data.root={root / 'shards'}", "backbone.height=32", "backbone.width=48",
                   "backbone.num_frames=8"])
    ds = build_eval_dataset(cfg.data, split="test", stride=2)
    assert len(ds) == 2
    sample = ds[0]
    assert sample["video"].dtype == torch.float32 and sample["video"].shape == (8, 3, H, W)
    assert sample["frame_indices"].tolist() == list(range(0, 16, 2))


def test_invalid_pose_rows_are_skipped_before_any_video_is_read(prepared, tmp_path):
    root, _ = prepared
    release = tmp_path / "release"
    (release / "train").mkdir(parents=True)
    src = sorted((root / "release" / "train").glob("*.txt"))[2]
    lines = src.read_text().splitlines()
    nums = lines[5].split()
    nums[7:19] = ["0"] * 12  # zero rotation and translation
    lines[5] = " ".join(nums)
    (release / "train" / src.name).write_text("\n".join(lines) + "\n")
    summary = re10k_prep.main(["--release", str(release), "--videos", str(root / "videos"), "--out",
                               str(tmp_path / "out"), "--splits", "train", "--min-frames", "8"])["train"]
    assert summary["written"] == 0 and summary["skipped"] == {"bad_pose": 1}
    assert f"{src.name}:6: invalid pose row: rotation is not orthonormal" in summary["examples"][0]
    with pytest.raises(ValueError, match="all 0 shard.* hold no samples"):
        build_dataloader(str(tmp_path / "out"), num_frames=8, height=H, width=W)


def test_frames_deep_in_a_long_video_are_found_after_a_seek(tmp_path):
    from camvid.data.video import TimestampsOutOfRange, frames_at_timestamps

    frames = [np.full((16, 16, 3), 2 * k, dtype=np.uint8) for k in range(120)]  # frame k has grey level 2k
    _encode_mp4(tmp_path / "long.mp4", frames)  # 4 s at 30 fps, keyframes every 250 frames by default
    for first in (3, 95):  # from the start (no seek), and 3.2 s in (seek to a keyframe first)
        wanted = [(first + i) * 1_000_000 // 30 + JITTER_US for i in range(10)]
        got = frames_at_timestamps(tmp_path / "long.mp4", wanted)
        levels = [float(f.mean()) / 2 for f in got.frames]
        assert np.allclose(levels, range(first, first + 10), atol=1.0), levels
        assert got.errors_us.max() < 5_000
    with pytest.raises(TimestampsOutOfRange, match="after the last frame"):
        frames_at_timestamps(tmp_path / "long.mp4", [3_900_000, 9_000_000])
