"""Worker -> main process hand-off of uint8 video through reused shared-memory slots
(camvid.data.handoff): exact frames and poses, and no batch overwritten while anything holds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from camvid.data.clips import open_shard_sample
from camvid.data.decode import decode_image
from camvid.data.handoff import HEADER_BYTES, SlotReceiver, SlotRing, slots_supported
from camvid.data.loader import build_dataloader
from camvid.data.samples import SampleSpec, collate, make_sample, num_views
from camvid.data.shards import iter_tar_samples, shard_urls
from camvid.geometry.cameras import parse_pose_lines
from conftest import jpeg_train_shards

pytestmark = pytest.mark.skipif(not slots_supported(), reason="torch without storage use counts")

T, H, W = 8, 16, 24


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return jpeg_train_shards(tmp_path_factory.mktemp("handoff"), num_clips=4, frames=T, height=H, width=W,
                             seed=5, shard_size=2)


def _clips(shard_dir) -> dict[str, dict]:
    return {s["__key__"]: s for url in shard_urls(shard_dir) for s in iter_tar_samples(url)}


def _check_batch(batch: dict, clips: dict[str, dict]) -> None:
    """Every row equals the frames decoded straight from its shard member and the poses of its
    pose file, relative to its conditioning frame."""
    video = batch["video"]
    assert video.dtype == torch.uint8 and video.shape[2:] == (3, H, W)
    for row, key in enumerate(batch["key"]):
        sample = clips[key.split(":")[0]]
        idx = batch["frame_indices"][row].tolist()
        frames = np.stack([decode_image(sample[f"{i:05d}.jpg"]) for i in idx])
        np.testing.assert_array_equal(video[row].permute(0, 2, 3, 1).numpy(), frames)
        c2w = parse_pose_lines(sample["pose.txt"].decode().splitlines()).c2w()[idx]
        rel = np.linalg.inv(c2w[int(batch["cond_index"][row])]) @ c2w
        np.testing.assert_allclose(batch["c2w"][row].double().numpy(), rel, atol=1e-5)


def test_ring_reuses_a_slot_only_once_nothing_refers_to_it():
    ring, receiver = SlotRing(max_slots=2), SlotReceiver()

    def send(value: int) -> torch.Tensor:
        out = ring.alloc((2, 3, 4))
        out.fill_(value)
        ref = ring.reference(out.permute(0, 2, 1))
        del out  # in a worker this tensor lives in another process
        return receiver.resolve(ref)

    first = send(1)
    assert first.shape == (2, 4, 3) and (first == 1).all()
    view = first[1:]  # a view keeps the slot as much as the tensor does
    held_np = first.numpy()
    del first
    assert receiver.release_unused() == 0 and ring.flags[0][0] == 1
    second = send(2)  # slot 0 is held: a new slot
    assert len(ring.storages) == 2 and (view == 1).all() and (held_np == 1).all()
    del second
    assert receiver.release_unused() == 1 and ring.flags[1][0] == 0  # slot 1 handed back, slot 0 still held
    third = send(3)  # slot 1 again
    assert len(ring.storages) == 2 and (view == 1).all() and (third == 3).all()
    del view, held_np, third
    assert receiver.release_unused() == 2 and [f[0] for f in ring.flags] == [0, 0]
    fourth = send(4)
    assert len(ring.storages) == 2 and (fourth == 4).all()


def test_ring_falls_back_to_fresh_memory_when_every_slot_is_held():
    ring, receiver = SlotRing(max_slots=1), SlotReceiver()
    a = ring.alloc((5,))
    held = receiver.resolve(ring.reference(a))
    b = ring.alloc((5,))  # the only slot is lent out: fresh shared memory, not a slot
    assert ring.fallbacks == 1 and ring.reference(b) is None and b.is_shared()
    assert b.untyped_storage().data_ptr() != held.untyped_storage().data_ptr()
    del a, held
    assert receiver.release_unused() == 1
    too_big = ring.alloc((10,))  # the free slot holds 5 bytes: too small
    assert ring.fallbacks == 2 and ring.reference(too_big) is None
    assert ring.storages[0].nbytes() == HEADER_BYTES + 5
    c = ring.alloc((3,))  # fits
    assert ring.reference(c).index == 0 and ring.fallbacks == 2


def test_receiver_rejects_protocol_errors():
    ring, receiver = SlotRing(max_slots=1), SlotReceiver()
    ref = ring.reference(ring.alloc((4,)))
    stale = type(ref)(ref.pid, ref.index, ref.offset, ref.shape, ref.stride)  # without the storage
    with pytest.raises(RuntimeError, match="by reference before sending it"):
        SlotReceiver().resolve(stale)
    kept = receiver.resolve(ref)
    with pytest.raises(RuntimeError, match="before the main process freed it"):
        receiver.resolve(stale)
    del kept


@pytest.mark.parametrize("pairing, num_frames, batch_size, workers", [("none", T, 1, 1), ("re10k_fold", 4, 2, 2)])
def test_workers_deliver_exact_batches_through_reused_slots(shards, pairing, num_frames, batch_size, workers):
    """(1 worker at batch 1 hands over groups of 4 batches: camvid.data.grouping)"""
    clips = _clips(shards)
    loader = build_dataloader(str(shards), pairing=pairing, num_frames=num_frames, height=H, width=W,
                              stride_min=1, stride_max=1, batch_size=batch_size, num_workers=workers, shuffle_buffer=1,
                              epoch_length=40, seed=2, cap_workers=False)  # 2 workers on any machine
    # few slots (a hand-off group's and 2 more): reuse and fallbacks both happen within 40 batches
    loader.handoff_slots = loader.handoff_group + 2
    kept, count = [], 0
    for number, batch in enumerate(loader):
        assert batch["video"].shape[:2] == (batch_size * (2 if pairing == "re10k_fold" else 1), num_frames)
        _check_batch(batch, clips)  # correct when it arrives ...
        if number % 3 == 0:
            kept.append(batch)  # ... and still correct at the end for the batches held all along
        count += 1
    for batch in kept:
        _check_batch(batch, clips)
    assert count == 40 and loader.handoff_group == (4 if workers == 1 else 1)
    receiver = loader.slot_receiver
    assert receiver.resolved > len(receiver.slots) > 0  # slots were reused


def test_held_batches_are_never_overwritten(shards):
    clips = _clips(shards)
    loader = build_dataloader(str(shards), num_frames=T, height=H, width=W, stride_min=1, stride_max=1,
                              batch_size=1, num_workers=1, shuffle_buffer=1, epoch_length=12, seed=4)
    loader.handoff_slots = 2
    batches = list(loader)  # every batch held: the worker must not reuse a slot
    assert len(batches) == 12
    for batch in batches:
        _check_batch(batch, clips)


def test_plain_dataloader_over_a_stream_gets_tensors(shards):
    """Slots are used only under StreamLoader, which turns the references back into tensors, even
    when the same data set was read by a StreamLoader before."""
    loader = build_dataloader(str(shards), num_frames=T, height=H, width=W, stride_min=1, stride_max=1,
                              batch_size=1, num_workers=1, epoch_length=2, seed=4)
    assert loader.handoff_slots > 0 and len(list(loader)) == 2 and loader.slot_receiver.resolved == 2
    stream = loader.dataset
    assert stream.handoff_slots == 0
    batch = next(iter(DataLoader(stream, batch_size=None, num_workers=1)))
    assert isinstance(batch["video"], torch.Tensor)
    _check_batch({**batch, **{k: torch.as_tensor(v) for k, v in batch.items() if isinstance(v, np.ndarray)}},
                 _clips(shards))


@pytest.mark.parametrize("pairing, num_frames", [("none", T), ("re10k_fold", 4), ("webvid_homography", 4)])
def test_samples_decode_into_their_place_in_the_batch_buffer(shards, pairing, num_frames):
    """What a worker does with a slot, here in one process: samples given their place in a batch
    buffer decode straight into it, and collate returns a view of the buffer equal to a plain
    collate of the same samples."""
    clips = _clips(shards)
    spec = SampleSpec(num_frames, H, W, 1, 1, train=True, random_cond=True)
    views = num_views(pairing)
    buf = torch.full((3, views, num_frames, H, W, 3), 7, dtype=torch.uint8)
    keys = sorted(clips)[:2]
    placed = [make_sample(open_shard_sample(clips[k]), spec, np.random.default_rng(i), pairing, buf[i])
              for i, k in enumerate(keys)]
    plain = [make_sample(open_shard_sample(clips[k]), spec, np.random.default_rng(i), pairing)
             for i, k in enumerate(keys)]
    in_place = placed[0]["video"] if views == 1 else placed[0]["video"][0]
    assert in_place.data_ptr() == buf[0, 0].data_ptr()  # decoded there, not copied there
    batch, expected = collate(placed, buf), collate(plain)
    assert batch["video"].data_ptr() == buf.data_ptr() and batch["video"].shape == expected["video"].shape
    torch.testing.assert_close(batch["video"], expected["video"], rtol=0, atol=0)
    for name in ("K", "c2w", "frame_indices", "cond_index"):
        torch.testing.assert_close(batch[name], expected[name], rtol=0, atol=0)
    assert batch["key"] == expected["key"]
    assert (buf[2] == 7).all()  # the unused third place is untouched
    if pairing != "webvid_homography":  # (homography pairs carry identity cameras)
        _check_batch(batch, clips)
