"""Loader integrity, tested as a hostile user would: truncated tars, samples without cameras, corrupt
frames, invalid pose rows, unreadable shards. Each is skipped and counted by reason (summed over
workers and ranks) or refused with an error naming the file; never a misaligned frame/pose pair."""

from __future__ import annotations

import json
import shutil
import tarfile
import warnings

import pytest
import torch
import webdataset as wds

from camvid.data.health import TooManySkips, format_report, merge_reports
from camvid.data.loader import build_dataloader
from camvid.data.shards import ShardRef, read_shard, shard_urls, write_re10k_shards
from camvid.data.synthetic_writer import write_synthetic_re10k

T, H, W = 6, 12, 16


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    write_synthetic_re10k(root, num_clips=8, num_frames=T, height=H, width=W, seed=4, test_every=0, texture_size=32)
    return root


def _shards(source, tmp_path, shard_size=3, image_format="png"):
    out = tmp_path / "shards"
    write_re10k_shards(source, "train", out, shard_size=shard_size, image_format=image_format)
    return out


def _samples(url):
    return [{k: v for k, v in s.items() if k != "__url__"} for s in read_shard(ShardRef(url)) if isinstance(s, dict)]


def _rewrite(url, samples):
    with wds.TarWriter(url) as writer:
        for sample in samples:
            writer.write(sample)


def _read_all(out, **kw):
    """Every sample once (evaluation order), with the summed skip report."""
    loader = build_dataloader(str(out), num_frames=2, height=H, width=W, batch_size=1, train=False, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    return batches, loader.health.report(), " ".join(str(w.message) for w in caught)


def _member_offsets(url):
    with tarfile.open(url) as tar:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tar]


@pytest.mark.parametrize("where", ["mid_member", "block_boundary", "between_samples"])
def test_truncated_tar_drops_its_partial_last_sample(source, tmp_path, where):
    out = _shards(source, tmp_path, shard_size=3)
    url = shard_urls(out)[0]
    members = _member_offsets(url)
    last_key = members[-1][0].split(".")[0]
    first_of_last = next(m for m in members if m[0].startswith(last_key + "."))
    json_of_last = next(m for m in members if m[0] == f"{last_key}.json")
    data = open(url, "rb").read()
    if where == "mid_member":
        cut = json_of_last[2] - 300  # inside the data of the last sample's final frame
    elif where == "block_boundary":
        cut = json_of_last[1]  # on the 512-byte header of its json: a clean-looking tar missing fields
        assert cut % 512 == 0
    else:
        cut = first_of_last[1]  # exactly between two samples
    open(url, "wb").write(data[:cut])
    batches, report, text = _read_all(out)
    keys = [b["key"][0] for b in batches]
    in_shard = sorted({m[0].split(".")[0] for m in members})  # 3 samples
    # A cut between samples leaves a tar that reads cleanly; the missing end-of-archive marker
    # shows it was cut, so the last sample read is dropped too (nothing proves it is complete).
    kept = in_shard[:2] if where != "between_samples" else in_shard[:1]
    assert sorted(keys) == sorted(kept + _keys_of_other_shards(out, url))
    assert report["skipped"] == {"truncated_shard": 3 - len(kept)}
    assert report["shards"] == {url: 3 - len(kept)}
    assert "shard-000000.tar" in text and "truncated" in text


def _keys_of_other_shards(out, skip_url):
    return [s["__key__"] for url in shard_urls(out) if url != skip_url for s in _samples(url)]


def test_re10k_sample_without_pose_is_skipped_never_identity(source, tmp_path):
    out = _shards(source, tmp_path, shard_size=8)
    url = shard_urls(out)[0]
    samples = _samples(url)
    victim = samples[2]["__key__"]
    samples[2] = {k: v for k, v in samples[2].items() if k != "pose.txt"}
    _rewrite(url, samples)
    batches, report, text = _read_all(out)
    assert victim not in [b["key"][0] for b in batches] and len(batches) == 7
    assert report["skipped"] == {"no_cameras": 1}
    assert f"{victim}: RealEstate10K sample without pose.txt" in text
    for b in batches:  # every sample trained has real, non-identity cameras past the first frame
        assert not torch.allclose(b["c2w"][0, 1], torch.eye(4))


@pytest.mark.parametrize("loading", [{}, {"num_workers": 1, "decode_threads": 2}], ids=["in_process", "worker_2_threads"])
def test_corrupt_jpeg_is_skipped_and_named(source, tmp_path, loading):
    """In the main process, and in a worker decoding each clip on 2 threads: the same skip, named the
    same way."""
    out = _shards(source, tmp_path, shard_size=8, image_format="jpg")
    url = shard_urls(out)[0]
    samples = _samples(url)
    victim = samples[1]["__key__"]
    samples[1]["00000.jpg"] = samples[1]["00000.jpg"][:40] + b"\x00" * 200  # header kept, body garbage
    _rewrite(url, samples)
    batches, report, text = _read_all(out, **loading)
    assert len(batches) == 7 and report["skipped"] == {"corrupt_image": 1}
    assert victim not in [b["key"][0] for b in batches]
    assert f"{victim}.00000.jpg: cannot decode image" in text or loading
    assert f"{victim}.00000.jpg: cannot decode image" in str(report)


@pytest.mark.parametrize("row,expect", [
    ("nan", "malformed pose line: non-finite value"),
    ("overflow", "a value is not finite in float32"),
    ("zero_rotation", "rotation is not orthonormal"),
    ("skewed_rotation", "rotation is not orthonormal"),
    ("reflection", "determinant <= 0"),
    ("negative_focal", "focal length"),
])
def test_invalid_pose_rows_are_skipped_with_file_and_line(source, tmp_path, row, expect):
    out = _shards(source, tmp_path, shard_size=8)
    url = shard_urls(out)[0]
    samples = _samples(url)
    victim = samples[0]["__key__"]
    lines = samples[0]["pose.txt"].decode().splitlines()
    nums = lines[3].split()
    if row == "nan":
        nums[10] = "nan"
    elif row == "overflow":
        nums[10] = "1e305"  # finite in float64, inf in float32
    elif row == "zero_rotation":
        for i in (7, 8, 9, 11, 12, 13, 15, 16, 17):
            nums[i] = "0"
    elif row == "skewed_rotation":
        nums[7] = str(float(nums[7]) * 1.5)
    elif row == "reflection":
        for i in (7, 8, 9):  # negate the first row of R: orthonormal, det -1
            nums[i] = str(-float(nums[i]))
    else:
        nums[1] = "-0.5"
    lines[3] = " ".join(nums)
    samples[0]["pose.txt"] = ("\n".join(lines) + "\n").encode()
    _rewrite(url, samples)
    batches, report, text = _read_all(out)
    assert victim not in [b["key"][0] for b in batches] and len(batches) == 7
    assert report["skipped"] == {"bad_pose": 1}
    assert f"{victim}.pose.txt:4:" in text and expect in text


def test_unreadable_shard_is_named_and_counts_its_samples(source, tmp_path):
    out = _shards(source, tmp_path, shard_size=3)
    url = shard_urls(out)[1]
    open(url, "wb").write(b"this is not a tar file" * 100)
    batches, report, text = _read_all(out)
    assert len(batches) == 5 and report["skipped"] == {"unreadable_shard": 3}
    assert "shard-000001.tar: not a readable tar shard" in text


def test_folder_errors_name_the_problem(source, tmp_path):
    out = _shards(source, tmp_path, shard_size=4)
    with pytest.raises(NotADirectoryError, match="data root is a file.*shard-000000.tar.*manifest.json"):
        build_dataloader(shard_urls(out)[0])
    (out / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 .tar file\(s\) but no manifest.json"):
        build_dataloader(str(out))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"source": "re10k", "num_samples": 0,
                                                      "shards": [{"name": "shard-000000.tar", "count": 0}]}))
    _rewrite(str(empty / "shard-000000.tar"), [])
    with pytest.raises(ValueError, match="all 1 shard.* hold no samples"):
        build_dataloader(str(empty), world_size=2, rank=1)


def test_skip_counts_sum_over_two_workers_and_two_ranks(source, tmp_path):
    out = _shards(source, tmp_path, shard_size=2)  # 4 shards: one per (rank, worker)
    urls = shard_urls(out)
    expected_keys = []
    for url in urls:  # one sample without cameras in every shard
        samples = _samples(url)
        expected_keys.append(samples[0]["__key__"])
        samples[1] = {k: v for k, v in samples[1].items() if k != "pose.txt"}
        _rewrite(url, samples)
    reports, keys = [], []
    for rank in range(2):
        batches, report, _ = _read_all(out, num_workers=2, cap_workers=False, rank=rank, world_size=2)
        reports.append(report)
        keys += [b["key"][0] for b in batches]
        assert report["skipped"] == {"no_cameras": 2}  # both of this rank's workers reported
    total = merge_reports(reports)
    assert sorted(keys) == sorted(expected_keys)
    assert total["skipped"] == {"no_cameras": 4} and total["samples"] == 8
    assert sorted(total["shards"]) == sorted(urls)
    assert format_report(total) == "4 of 8 samples skipped (50.0%): no_cameras=4"


def test_too_many_skips_stops_naming_the_worst_shards(source, tmp_path):
    out = _shards(source, tmp_path, shard_size=4)
    bad = shard_urls(out)[1]
    samples = _samples(bad)
    _rewrite(bad, [{k: v for k, v in s.items() if k != "pose.txt"} for s in samples])
    loader = build_dataloader(str(out), num_frames=2, height=H, width=W, batch_size=1, epoch_length=40,
                              max_skip_fraction=0.2, skip_check_min_samples=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TooManySkips, match=r"more than data.max_skip_fraction=0.2.*no_cameras.*"
                                               r"Worst shards: .*shard-000001.tar"):
            list(loader)


def test_training_reports_skips_in_its_summary(data_root, tmp_path):
    from camvid.training.loop import train
    from conftest import compose, run_overrides

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    url = shard_urls(root / "shards" / "train")[0]
    samples = _samples(url)
    _rewrite(url, [{k: v for k, v in samples[0].items() if k != "pose.txt"}, *samples[1:]])
    cfg = compose(run_overrides(root, tmp_path / "run", "model=cami2v", "backbone=tiny_dynamicrafter",
                                "data=synthetic", f"data.root={root}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(cfg)
    # the shard is drawn with replacement, so the one bad sample may be met more than once
    report = summary["data_skipped"]
    assert set(report["skipped"]) == {"no_cameras"} and report["skipped"]["no_cameras"] >= 1
    assert report["shards"] == {url: report["skipped"]["no_cameras"]}
    assert report["samples"] >= report["skipped"]["no_cameras"] + 2  # two steps trained on good samples


def test_one_bad_shard_drawn_early_does_not_stop_a_large_run():
    from camvid.data.health import check_report

    early = {"samples": 150, "skipped": {"unreadable_shard": 100}, "shards": {"s7.tar": 100}, "examples": [],
             "largest_event": 100}
    check_report(early, max_skip_fraction=0.1, min_samples=100)  # 67% of a tiny sample: no verdict yet
    later = dict(early, samples=2100)
    check_report(later, max_skip_fraction=0.1, min_samples=100)  # 4.8%
    bad = dict(later, skipped={"unreadable_shard": 300}, shards={"s7.tar": 200, "s9.tar": 100})
    with pytest.raises(TooManySkips, match=r"300 of 2100 samples skipped .* Worst shards: s7.tar \(200\), s9.tar"):
        check_report(bad, max_skip_fraction=0.1, min_samples=100)


def test_a_stream_of_only_bad_samples_stops_in_its_worker(source, tmp_path):
    out = _shards(source, tmp_path, shard_size=4)
    for url in shard_urls(out):
        _rewrite(url, [{k: v for k, v in s.items() if k != "pose.txt"} for s in _samples(url)])
    loader = build_dataloader(str(out), num_frames=2, height=H, width=W, batch_size=1, num_workers=1,
                              skip_check_min_samples=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TooManySkips, match=r"no usable sample at all.*no_cameras"):
            next(iter(loader))
