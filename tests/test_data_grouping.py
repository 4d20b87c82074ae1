"""Hand-off groups (camvid.data.grouping): a worker hands several training batches over in one
DataLoader item; the main process gets exactly the batches, order, skip counts and resume
positions of the ungrouped loader."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import webdataset as wds

from camvid.data.factory import build_train_dataloader
from camvid.data.grouping import (
    END_KEY,
    GROUP_KEY,
    WORKER_KEY,
    group_batches,
    in_loader_order,
    resolve_handoff_group,
)
from camvid.data.loader import build_dataloader
from camvid.data.shards import ShardRef, read_shard, shard_urls, write_re10k_shards, write_webvid_shards
from camvid.data.synthetic_writer import write_synthetic_re10k, write_synthetic_webvid

T, H, W = 6, 8, 8
FIELDS = ("video", "c2w", "K", "frame_indices", "cond_index")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """7 clips in shards of 2 (2, 2, 2, 1); shard 1 holds a sample without cameras (skipped and
    counted), so a finite pass gives worker 0 four samples and worker 1 two."""
    root = tmp_path_factory.mktemp("grouping")
    write_synthetic_re10k(root, num_clips=7, num_frames=T, height=H, width=W, seed=2, test_every=0, texture_size=32)
    write_re10k_shards(root, "train", root / "shards", shard_size=2, image_format="png")
    bad = shard_urls(root / "shards")[1]
    samples = [{k: v for k, v in s.items() if k != "__url__"} for s in read_shard(ShardRef(bad)) if isinstance(s, dict)]
    samples[0] = {k: v for k, v in samples[0].items() if k != "pose.txt"}
    with wds.TarWriter(bad) as writer:
        for sample in samples:
            writer.write(sample)
    write_synthetic_webvid(root / "webvid", num_clips=2, num_frames=T, height=H, width=W, seed=2)
    write_webvid_shards(root / "webvid", root / "webvid_shards", shard_size=1, image_format="png")
    return root


def _read(data, group, **kw):
    """Every batch (its keys and tensors, copied) and the summed skip report."""
    kw = {"num_frames": 3, "height": H, "width": W, "stride_min": 1, "stride_max": 2, "num_workers": 2,
          "cap_workers": False, "seed": 3, **kw}
    loader = build_dataloader(str(data / "shards"), handoff_group=group, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped sample's warning
        batches = [{"key": b["key"], "source": b.get("source"), **{f: b[f].clone() for f in FIELDS}} for b in loader]
    return batches, loader.health.report(), loader


def _assert_same(got, expected):
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert [b["source"] for b in got] == [b["source"] for b in expected]
    for a, b in zip(got, expected):
        for field in FIELDS:
            torch.testing.assert_close(a[field], b[field], rtol=0, atol=0)


@pytest.mark.parametrize("kw, group, batches", [
    # resampled training epoch: worker shares 4 and 3 batches, each ending in a partial group
    ({"batch_size": 1, "epoch_length": 7}, 3, 7),
    # a finite pass (evaluation): worker 0 has 4 samples, worker 1 two (one skipped); batches of 3
    # keep their partial last batch (drop_last=False): 3 + 1 and 2 samples
    ({"batch_size": 3, "train": False}, 2, 3),
    ({"batch_size": 1, "train": False}, 4, 6),
    ({"batch_size": 1, "epoch_length": 6, "num_workers": 1}, "auto", 6),  # the default: groups of 4 at 1 worker
])
def test_grouped_loader_gives_the_ungrouped_batches_in_order(data, kw, group, batches):
    plain, plain_report, plain_loader = _read(data, 1, **kw)
    grouped, report, loader = _read(data, group, **kw)
    assert plain_loader.handoff_group == 1 and loader.handoff_group == (4 if group == "auto" else group)
    assert len(plain) == batches
    _assert_same(grouped, plain)
    assert report == plain_report
    if kw.get("train") is False:
        assert report["skipped"] == {"no_cameras": 1} and report["samples"] == 7


def test_resume_skips_the_same_batches_grouped(data):
    kw = {"batch_size": 1, "epoch_length": 9, "epoch": 1}
    full, _, _ = _read(data, 1, **kw)
    grouped_full, _, _ = _read(data, 2, **kw)
    _assert_same(grouped_full, full)
    for skip in (3, 4):  # the next batch belongs to worker 1, then to worker 0
        resumed, _, _ = _read(data, 2, skip_batches=skip, **kw)
        _assert_same(resumed, full[skip:])


def test_cvd_mix_grouped_equals_ungrouped(data):
    kw = {"pairing": "cvd_mix", "webvid_root": str(data / "webvid_shards"), "batch_size": 1, "epoch_length": 9,
          "num_frames": 2}
    plain, _, _ = _read(data, 1, **kw)
    grouped, _, loader = _read(data, 3, **kw)
    assert loader.handoff_group == 3 and {b["source"] for b in plain} == {"re10k_fold", "webvid_homography"}
    _assert_same(grouped, plain)
    resumed, _, _ = _read(data, 3, skip_batches=5, **kw)
    _assert_same(resumed, plain[5:])


def test_workers_send_groups_and_an_end_marker(data):
    """What crosses the DataLoader: items of up to ``group`` batches, one end marker per worker."""
    loader = build_dataloader(str(data / "shards"), num_frames=3, height=H, width=W, batch_size=1, train=False,
                              num_workers=2, cap_workers=False, handoff_group=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = list(loader._start())  # the raw items, before StreamLoader unpacks them
    assert [(item[WORKER_KEY], len(item.get(GROUP_KEY, ())), bool(item.get(END_KEY))) for item in items] == [
        (0, 3, False), (1, 2, False), (0, 1, False),  # 4 and 2 batches, round-robin by item; a partial group
        (1, 0, True), (0, 0, True)]  # each worker's last item (its skip report) marks its end


def _torch_round_robin(streams):
    """A model of torch's item order: round-robin over the workers, an exhausted worker dropped."""
    active = list(streams)
    while active:
        for stream in list(active):
            item = next(stream, None)
            if item is None:
                active.remove(stream)
            else:
                yield item


@pytest.mark.parametrize("counts", [(5, 2), (2, 5), (0, 3), (3, 3, 1), (1, 0, 0), (4, 4, 4, 4)])
@pytest.mark.parametrize("group", [1, 2, 3, 5])
def test_unpacking_restores_torch_order_for_uneven_workers(counts, group):
    def batches(worker):
        for n in range(counts[worker]):
            yield {"id": (worker, n)}
        yield {"report": worker}  # a skip report after the last batch, as the loader's workers send

    plain = [item for item in _torch_round_robin(batches(w) for w in range(len(counts))) if "id" in item]
    grouped = _torch_round_robin(group_batches(batches(w), group, w, is_batch=lambda item: "id" in item)
                                 for w in range(len(counts)))
    out = list(in_loader_order(grouped, len(counts)))
    assert [item["id"] for item in out if "id" in item] == [item["id"] for item in plain]
    assert sorted(item["report"] for item in out if "report" in item) == list(range(len(counts)))
    assert all(WORKER_KEY not in item for item in out)


def test_group_size_auto_and_bad_values():
    assert [resolve_handoff_group("auto", clips, 1) for clips in (1, 2, 3, 4, 8)] == [4, 2, 2, 1, 1]
    assert resolve_handoff_group(None, 1, 1) == 4 and resolve_handoff_group(6, 1, 2) == 6
    assert resolve_handoff_group("auto", 1, 2) == 1  # auto groups only a single worker's batches
    assert resolve_handoff_group("auto", 1, 0) == 1 and resolve_handoff_group(5, 1, 0) == 1  # no workers: no groups
    for bad in (0, -1, 2.5, "4", True):
        with pytest.raises(ValueError, match=r"data.handoff_group=.*expected 'auto' or an integer >= 1"):
            resolve_handoff_group(bad, 1, 2)
    cfg = {"root": "unused", "num_frames": 2, "height": H, "width": W, "handoff_group": "big"}
    with pytest.raises(ValueError, match="data.handoff_group='big'"):
        build_train_dataloader(cfg, batch_size=1, num_workers=1)


def test_unpacking_rejects_items_without_a_worker():
    with pytest.raises(RuntimeError, match="without a valid worker id"):
        list(in_loader_order(iter([{GROUP_KEY: [{"id": 0}]}]), 2))
    items = itertools.chain([{GROUP_KEY: [{"id": 0}], WORKER_KEY: 2}])
    with pytest.raises(RuntimeError, match="without a valid worker id \\(2\\)"):
        list(in_loader_order(items, 2))
