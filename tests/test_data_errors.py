"""Bad input: clear errors naming the file, or counted skips inside otherwise good shards."""

from __future__ import annotations

import shutil
import warnings

import pytest
import webdataset as wds

from camvid.data.clips import ClipTooShort
from camvid.data.loader import ClipStream, Re10kDirectoryDataset, build_dataloader, resolve_units
from camvid.data.samples import SampleSpec, collate
from camvid.data.shards import iter_tar_samples, shard_urls, write_re10k_shards
from camvid.data.synthetic_writer import write_synthetic_re10k

T, H, W = 8, 12, 16


@pytest.fixture()
def root(tmp_path):
    write_synthetic_re10k(tmp_path / "data", num_clips=3, num_frames=T, height=H, width=W, seed=1, test_every=0,
                          texture_size=32)
    return tmp_path / "data"


def test_missing_or_empty_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: .*nowhere"):
        build_dataloader(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no clips .* in .*empty/train"):
        build_dataloader(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="split directory does not exist: .*empty/test"):
        Re10kDirectoryDataset(tmp_path / "empty", "test")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text('{"shards": [{"name": "shard-000000.tar", "count": 1}]}')
    with pytest.raises(FileNotFoundError, match="missing: .*shard-000000.tar"):
        resolve_units(tmp_path / "shards")


def test_malformed_pose_line_names_file_and_line(root):
    pose = root / "train" / "syn0001000001.txt"
    lines = pose.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 2)[0]  # drop two numbers of frame 2
    pose.write_text("\n".join(lines) + "\n")
    ds = Re10kDirectoryDataset(root, "train", num_frames=2, height=H, width=W, stride_min=1, stride_max=1)
    with pytest.raises(ValueError, match=r"syn0001000001.txt:4: malformed pose line"):
        ds[1]
    # sharding skips the clip, names it in the manifest and goes on
    with pytest.warns(UserWarning, match="syn0001000001.txt:4: malformed pose line"):
        manifest = write_re10k_shards(root, "train", root / "shards")
    assert manifest["num_samples"] == 2 and [s["clip"] for s in manifest["skipped"]] == ["syn0001000001"]
    assert not list((root / "shards").glob(".*"))  # no temporary files left behind


def test_missing_frame_file_is_never_paired_by_position(root):
    (root / "train" / "frames" / "syn0001000000" / "00003.png").unlink()
    ds = Re10kDirectoryDataset(root, "train", num_frames=2, height=H, width=W)
    with pytest.raises(ValueError, match=r"syn0001000000: 7 frame files but 8 pose lines"):
        ds[0]
    shutil.rmtree(root / "train" / "frames" / "syn0001000002")
    with pytest.raises(FileNotFoundError, match="frame folder missing .*syn0001000002"):
        ds[2]


def test_clip_shorter_than_requested_frames(root):
    ds = Re10kDirectoryDataset(root, "train", num_frames=T + 1, height=H, width=W)
    with pytest.raises(ClipTooShort, match=f"syn0001000000.txt: has {T} frames, needs at least {T + 1}"):
        ds[0]
    fold = Re10kDirectoryDataset(root, "train", num_frames=5, height=H, width=W, pairing="re10k_fold")
    with pytest.raises(ClipTooShort, match=r"syn0001000000.txt \(re10k_fold pair\): has 8 frames, needs at least 9"):
        fold[0]


def test_bad_samples_inside_good_shards_are_skipped_and_counted(root):
    write_re10k_shards(root, "train", root / "shards", shard_size=10)
    url = shard_urls(root / "shards")[0]
    good = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"} for s in iter_tar_samples(url)]
    broken_pose = dict(good[0], __key__="badpose")
    broken_pose["pose.txt"] = broken_pose["pose.txt"].replace(b" 0 0 ", b" 0 x ", 1)
    missing_frame = {k: v for k, v in good[1].items() if k != "00004.png"} | {"__key__": "noframe"}
    short = {k: v for k, v in good[2].items() if not k[:5].isdigit() or int(k[:5]) < 2} | {"__key__": "short"}
    short["pose.txt"] = b"\n".join(good[2]["pose.txt"].splitlines()[:3]) + b"\n"
    short["json"] = short["json"].replace(b'"num_frames": 8', b'"num_frames": 2')
    with wds.TarWriter(url) as writer:
        for sample in [broken_pose, *good, missing_frame, short]:
            writer.write(sample)
    kind, units = resolve_units(root / "shards")
    stream = ClipStream(units, kind, SampleSpec(4, H, W, 1, 1, train=False), resampled=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = [k for batch in stream for k in batch["key"]]
    assert sorted(keys) == sorted(s["__key__"] for s in good)
    assert stream.skipped == 3
    text = " ".join(str(w.message) for w in caught)
    assert "badpose" in text and "malformed pose line" in text
    assert "noframe" in text and "json says 8 frames but the sample holds 7" in text
    assert "short" in text and "needs at least 4" in text


def test_bad_options(root):
    with pytest.raises(ValueError, match="stride_min <= stride_max"):
        build_dataloader(str(root), stride_min=5, stride_max=2)
    with pytest.raises(ValueError, match="unknown pairing 'triplets'"):
        build_dataloader(str(root), pairing="triplets")
    with pytest.raises(ValueError, match="cvd_mix needs webvid_root"):
        build_dataloader(str(root), pairing="cvd_mix")
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        build_dataloader(str(root), train=False, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank must be in"):
        build_dataloader(str(root), rank=2, world_size=2)
    ds = Re10kDirectoryDataset(root, "train", num_frames=2, height=H, width=W)
    with pytest.raises(ValueError, match="a batch must hold one pairing"):
        fold = Re10kDirectoryDataset(root, "train", num_frames=2, height=H, width=W, pairing="re10k_fold")
        collate([ds[0], fold[0]])
