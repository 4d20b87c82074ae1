"""Read-ahead in DataLoader workers (camvid.data.readahead): same items in the same order, errors at
their position, the thread stopped when the reader stops, and worker batches identical with and
without it."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from camvid.data.loader import build_dataloader
from camvid.data.readahead import read_ahead
from conftest import jpeg_train_shards

T, H, W = 4, 12, 16


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "camvid-read-ahead"]


def _gone(timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while _threads() and time.monotonic() < end:
        time.sleep(0.01)
    return not _threads()


def test_items_come_in_order_and_the_thread_ends():
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))
    assert list(read_ahead(iter([]))) == []
    assert _gone()


def test_an_upstream_error_is_raised_at_its_position():
    def items():
        yield from (1, 2)
        raise RuntimeError("shard list exhausted")

    got = []
    with pytest.raises(RuntimeError, match="shard list exhausted"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [1, 2] and _gone()


def test_closing_the_reader_stops_an_endless_source():
    pulled = []

    def endless():
        n = 0
        while True:
            pulled.append(n)
            yield n
            n += 1

    reader = read_ahead(endless(), depth=2, poll_s=0.01)
    assert [next(reader) for _ in range(5)] == [0, 1, 2, 3, 4]
    reader.close()
    assert not _threads()  # joined by close()
    assert len(pulled) <= 5 + 2 + 1  # at most `depth` items queued and one in the thread's hands


def test_closing_the_reader_closes_the_source_in_its_thread():
    """The source's clean-up (in the loader: a half-built batch gives its slot back) runs in the
    thread that iterated it, before close() returns."""
    cleaned = []

    def source():
        try:
            yield from range(100)
        finally:
            cleaned.append(threading.current_thread().name)

    reader = read_ahead(source(), depth=1, poll_s=0.01)
    assert next(reader) == 0
    reader.close()
    assert cleaned == ["camvid-read-ahead"] and not _threads()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="read-ahead depth must be >= 1"):
        next(read_ahead(iter([1]), depth=0))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return jpeg_train_shards(tmp_path_factory.mktemp("readahead"), num_clips=3, frames=T, height=H, width=W,
                             seed=6, shard_size=1)


def test_worker_batches_are_the_same_with_and_without_read_ahead(shards, tmp_path, monkeypatch):
    import multiprocessing

    import camvid.data.loader as loader_mod

    marker = tmp_path / "read_ahead_used"

    def recording(items, depth):  # inherited by the forked worker: leaves a file when the worker reads ahead
        marker.write_text(str(depth))
        return read_ahead(items, depth)

    monkeypatch.setattr(loader_mod, "read_ahead", recording)

    def run(depth: int):
        loader = build_dataloader(str(shards), num_frames=T, height=H, width=W, stride_min=1, stride_max=2,
                                  batch_size=2, num_workers=1, epoch_length=6, seed=4, shuffle_buffer=3)
        loader.dataset.read_ahead = depth
        return [(b["key"], b["frame_indices"].clone(), b["video"].clone(), b["c2w"].clone()) for b in loader]

    plain = run(0)
    assert not marker.exists()
    ahead = run(2)
    if multiprocessing.get_start_method() == "fork":
        assert marker.read_text() == "2", "the worker did not read ahead"
    assert len(plain) == len(ahead) == 6
    for (k1, i1, v1, c1), (k2, i2, v2, c2) in zip(plain, ahead):
        assert k1 == k2
        torch.testing.assert_close(i1, i2, atol=0, rtol=0)
        torch.testing.assert_close(v1, v2, atol=0, rtol=0)
        torch.testing.assert_close(c1, c2, atol=0, rtol=0)
