"""Decode-ahead in DataLoader workers (camvid.data.readahead, ClipStream.iter_worker): a second thread
decodes and builds the next batches while the worker hands the current one over. The batches, their
order, skip counts and resume positions are those of a worker without it; an error raised while
decoding reaches the caller at its position; closing the stream stops the threads."""

from __future__ import annotations

import multiprocessing
import threading
import types
import warnings

import pytest
import webdataset as wds

import camvid.data.loader as loader_mod
from camvid.data.factory import build_train_dataloader
from camvid.data.loader import build_dataloader
from camvid.data.readahead import read_ahead
from camvid.data.shards import ShardRef, read_shard, shard_urls, write_re10k_shards, write_webvid_shards
from camvid.data.synthetic_writer import write_synthetic_re10k, write_synthetic_webvid

T, H, W = 6, 8, 8
FIELDS = ("video", "c2w", "K", "frame_indices", "cond_index")
THREADS = ("camvid-decode-ahead", "camvid-read-ahead")

needs_fork = pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                                reason="the workers must inherit a monkeypatch (fork start method)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """7 JPEG clips in shards of 2; shard 1 holds a sample without cameras (skipped and counted)."""
    root = tmp_path_factory.mktemp("decode_ahead")
    write_synthetic_re10k(root, num_clips=7, num_frames=T, height=H, width=W, seed=5, test_every=0, texture_size=32)
    write_re10k_shards(root, "train", root / "shards", shard_size=2, image_format="jpg")
    bad = shard_urls(root / "shards")[1]
    samples = [{k: v for k, v in s.items() if k != "__url__"} for s in read_shard(ShardRef(bad)) if isinstance(s, dict)]
    samples[0] = {k: v for k, v in samples[0].items() if k != "pose.txt"}
    with wds.TarWriter(bad) as writer:
        for sample in samples:
            writer.write(sample)
    write_synthetic_webvid(root / "webvid", num_clips=2, num_frames=T, height=H, width=W, seed=5)
    write_webvid_shards(root / "webvid", root / "webvid_shards", shard_size=1, image_format="jpg")
    return root


def _kw(**kw) -> dict:
    return {"num_frames": 3, "height": H, "width": W, "stride_min": 1, "stride_max": 2, "cap_workers": False,
            "seed": 3, **kw}


def _read(data, decode_ahead: int, **kw):
    """Every batch (keys, the bytes of every tensor, the source) and the summed skip report."""
    loader = build_dataloader(str(data / "shards"), decode_ahead=decode_ahead, **_kw(**kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped sample's warning
        batches = [{"key": b["key"], "source": b.get("source"), **{f: b[f].clone() for f in FIELDS}} for b in loader]
    return batches, loader.health.report(), loader


def _assert_same(got, expected):
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert [b["source"] for b in got] == [b["source"] for b in expected]
    for a, b in zip(got, expected):
        for field in FIELDS:
            assert a[field].dtype == b[field].dtype and a[field].shape == b[field].shape
            assert a[field].numpy().tobytes() == b[field].numpy().tobytes(), field


@pytest.fixture
def decode_ahead_marker(tmp_path, monkeypatch):
    """A file the forked workers write when they start a decode-ahead thread (its depth)."""
    marker = tmp_path / "decode_ahead_used"

    def recording(items, depth, **kw):
        if kw.get("name") == "camvid-decode-ahead":
            marker.write_text(str(depth))
        return read_ahead(items, depth, **kw)

    monkeypatch.setattr(loader_mod, "read_ahead", recording)
    return marker


@pytest.mark.parametrize("kw, batches", [
    ({"batch_size": 1, "epoch_length": 7, "num_workers": 1}, 7),  # 1 worker: hand-off groups of 4 (auto)
    ({"batch_size": 1, "epoch_length": 7, "num_workers": 2}, 7),  # worker shares of 4 and 3 batches
    ({"batch_size": 3, "train": False, "num_workers": 2}, 3),  # a finite pass, partial last batches kept
    ({"batch_size": 1, "epoch_length": 9, "epoch": 1, "skip_batches": 3, "num_workers": 2}, 6),  # resumed
    ({"batch_size": 1, "epoch_length": 8, "num_workers": 2, "pairing": "cvd_mix", "num_frames": 2}, 8),
])
def test_worker_batches_and_skip_counts_are_the_same_without_decode_ahead(data, decode_ahead_marker, kw, batches):
    if kw.get("pairing") == "cvd_mix":
        kw = {**kw, "webvid_root": str(data / "webvid_shards")}
    plain, plain_report, _ = _read(data, 0, **kw)
    assert not decode_ahead_marker.exists()
    ahead, report, loader = _read(data, 2, **kw)
    if multiprocessing.get_start_method() == "fork":
        assert decode_ahead_marker.read_text() == "2", "the workers did not decode ahead"
    assert len(plain) == batches
    _assert_same(ahead, plain)
    assert report == plain_report  # every sample attempted and skipped is counted once, none beyond the epoch
    if kw.get("train") is False:
        assert report["skipped"] == {"no_cameras": 1} and report["samples"] == 7
    if kw.get("pairing") == "cvd_mix":
        assert {b["source"] for b in ahead} == {"re10k_fold", "webvid_homography"}
    # every batch's video came through a reused shared-memory slot: the ring has room for the
    # batches built ahead (decode_ahead + 1 more slots), so no worker fell back to fresh memory
    assert loader.slot_receiver.resolved == len(ahead)


def test_resume_with_decode_ahead_continues_the_uninterrupted_stream(data):
    full, _, _ = _read(data, 1, batch_size=1, epoch_length=9, num_workers=2)
    for skip in (4, 5):
        resumed, _, _ = _read(data, 1, batch_size=1, epoch_length=9, num_workers=2, skip_batches=skip)
        _assert_same(resumed, full[skip:])


@needs_fork
@pytest.mark.parametrize("decode_ahead", [0, 1])
def test_an_error_while_decoding_reaches_the_caller_at_its_position(data, monkeypatch, decode_ahead):
    """A bug (not a bad sample) in the 4th sample's decoding: the 3 batches before it arrive, then
    the error, raised in the decode-ahead thread when there is one."""
    plain_make_sample = loader_mod.make_sample
    made = []

    def failing(*args, **kwargs):
        made.append(1)
        if len(made) == 4:
            raise RuntimeError(f"decoder bug in thread {threading.current_thread().name}")
        return plain_make_sample(*args, **kwargs)

    monkeypatch.setattr(loader_mod, "make_sample", failing)
    loader = build_dataloader(str(data / "shards"), decode_ahead=decode_ahead, handoff_group=1,
                              **_kw(batch_size=1, epoch_length=8, num_workers=1))
    got = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="decoder bug in thread") as err:
            for batch in loader:
                got.append(batch["key"])
    expected = "camvid-decode-ahead" if decode_ahead else "MainThread"
    assert f"decoder bug in thread {expected}" in str(err.value)
    assert len(got) == 3


def _in_fake_worker(monkeypatch):
    """Run streams in this process as DataLoader worker 0 of 1 (threads are then observable here)."""
    monkeypatch.setattr(loader_mod, "get_worker_info", lambda: types.SimpleNamespace(id=0, num_workers=1))


def _alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in THREADS]


@pytest.mark.parametrize("pairing", ["none", "cvd_mix"])
def test_closing_the_stream_early_stops_both_threads(data, monkeypatch, pairing):
    extra = {"pairing": "cvd_mix", "webvid_root": str(data / "webvid_shards"), "num_frames": 2} if pairing == "cvd_mix" \
        else {}
    stream = build_dataloader(str(data / "shards"), decode_ahead=1, **_kw(batch_size=1, num_workers=0,
                                                                          **extra)).dataset  # endless
    _in_fake_worker(monkeypatch)
    before = _alive()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = iter(stream)
        batches = [next(it) for _ in range(3)]
        assert "camvid-decode-ahead" in _alive() and "camvid-read-ahead" in _alive()
        it.close()
    assert _alive() == before  # joined on close: no thread left running
    made = sum(c.used for s in loader_mod._streams(stream) for c in s.counters.values())  # samples decoded
    assert len(batches) == 3 and made <= 3 + 1 + 1  # at most `decode_ahead` queued and one in the thread's hands


def test_in_a_worker_the_epoch_is_cut_inside_the_decode_thread(data, monkeypatch):
    """The thread stops at the epoch cut: the final skip report counts exactly the samples of the
    batches handed over (plus those skipped before them), nothing decoded beyond."""
    stream = build_dataloader(str(data / "shards"), decode_ahead=2,
                              **_kw(batch_size=2, epoch_length=5, num_workers=0)).dataset
    _in_fake_worker(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = list(iter(stream))
    assert _alive() == []
    batches, final = items[:-1], items[-1]
    assert len(batches) == 5 and final[loader_mod.HEALTH_ONLY]
    (report,) = final[loader_mod.HEALTH_KEY].values()
    assert report["samples"] - sum(report["skipped"].values()) == 10


def test_decode_ahead_setting_and_bad_values(data):
    cfg = {"root": str(data / "shards"), "num_frames": 2, "height": H, "width": W}
    assert build_train_dataloader(cfg, batch_size=1).dataset.decode_ahead == 1  # default on (used in workers)
    loader = build_train_dataloader({**cfg, "decode_ahead": 0}, batch_size=1, num_workers=1)
    assert loader.dataset.decode_ahead == 0
    on = build_train_dataloader({**cfg, "decode_ahead": 2}, batch_size=1, num_workers=1)
    assert on.handoff_slots == loader.handoff_slots + 3  # room for the batches built ahead: 2 queued, 1 held
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"decode_ahead must be an integer >= 0 \(0 = off\)"):
            build_train_dataloader({**cfg, "decode_ahead": bad}, batch_size=1)


def test_held_batches_are_never_overwritten_with_decode_ahead(data):
    """Every batch kept by the caller and few slots: the worker's thread, running ahead, must take
    fresh memory rather than a slot the main process still holds."""
    loader = build_dataloader(str(data / "shards"), decode_ahead=2, **_kw(batch_size=1, epoch_length=12,
                                                                         num_workers=1))
    loader.handoff_slots = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = list(loader)
    plain, _, _ = _read(data, 0, batch_size=1, epoch_length=12, num_workers=1)
    _assert_same([{"key": b["key"], "source": b.get("source"), **{f: b[f] for f in FIELDS}} for b in kept], plain)
