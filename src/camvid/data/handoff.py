"""Moving uint8 video from DataLoader workers to the main process through reused shared memory.

Why: torch's DataLoader hands every tensor a worker returns over in a *new* shared-memory segment.
The worker creates it (shm_open, mmap, a page fault on first touch of every 4 KB page) and the main
process fetches its file descriptor from the worker's resource-sharer thread (a socket connection
with an authentication handshake per tensor) and maps it again. For one 16 x 256 x 256 clip (3 MB)
that costs about half the CPU of decoding the clip (benchmarks/data.py, docs/performance.md).

Here each worker keeps a small ring of *slots*: shared-memory buffers created once, sent to the
main process once (the first time they carry a batch), then reused. A batch travels as a
:class:`SlotVideo` (worker pid, slot number, shape, strides) inside the worker's pickle; the main
process (:class:`SlotReceiver`) views its cached mapping of that slot as the batch's ``video``.

A slot is reused only once nothing in the main process refers to its memory any more: the
receiver holds exactly one reference to each slot's storage, and when the storage's use count is
back to that one (no tensor, view or numpy array of the batch is alive: the training loop moved
on, or copied the batch to the device or to pinned memory), it clears the slot's busy flag (byte 0
of the slot, the data starts at byte 64). A batch the caller keeps is therefore never overwritten;
when every slot of a worker is held, the worker falls back to a fresh segment per batch, which is
what torch does anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["SlotVideo", "SlotRing", "SlotReceiver", "worker_ring", "HEADER_BYTES", "slots_supported"]

HEADER_BYTES = 64  # byte 0: 1 while the main process may still read the slot; data 64-byte aligned
_BUSY, _FREE = 1, 0


def _use_count(storage: torch.UntypedStorage) -> int:
    return torch._C._storage_Use_Count(storage._cdata)


def slots_supported() -> bool:
    """The release test needs torch's storage use count (a private API: without it, every batch
    takes torch's own path)."""
    return hasattr(torch._C, "_storage_Use_Count")


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass
class SlotVideo:
    """A worker's batch video, by reference: ``storage`` is sent with the first batch a slot
    carries (torch passes its file descriptor), ``None`` afterwards."""

    pid: int
    index: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage: torch.UntypedStorage | None = None


class SlotRing:
    """One worker's slots. ``alloc`` gives a tensor in a free slot (marking it busy);
    ``reference`` turns a tensor that lives in a slot into a :class:`SlotVideo`."""

    def __init__(self, max_slots: int):
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.max_slots = max_slots
        self.pid = os.getpid()
        self.storages: list[torch.UntypedStorage] = []
        self.flags: list = []  # numpy views of each slot's header byte
        self.sent: list[bool] = []
        self.fallbacks = 0  # batches that found every slot held

    def _capacity(self, index: int) -> int:
        return self.storages[index].nbytes() - HEADER_BYTES

    def alloc(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A contiguous uint8 tensor of ``shape`` in shared memory: in a free slot when there is one
        (the smallest that fits), else in a new slot, else (all ``max_slots`` held) in a fresh
        segment that is not reused."""
        nbytes = 1
        for size in shape:
            nbytes *= int(size)
        free = [i for i, flag in enumerate(self.flags) if flag[0] == _FREE and self._capacity(i) >= nbytes]
        if free:
            index = min(free, key=self._capacity)
        elif len(self.storages) < self.max_slots:
            self.storages.append(torch.UntypedStorage._new_shared(HEADER_BYTES + nbytes))
            self.flags.append(torch.empty(0, dtype=torch.uint8).set_(self.storages[-1], 0, (1,)).numpy())
            self.sent.append(False)
            index = len(self.storages) - 1
        else:
            self.fallbacks += 1
            return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes)).view(shape)
        self.flags[index][0] = _BUSY
        return torch.empty(0, dtype=torch.uint8).set_(self.storages[index], HEADER_BYTES, tuple(shape),
                                                       _contiguous_strides(tuple(shape)))

    def _index(self, tensor: torch.Tensor) -> int | None:
        ptr = tensor.untyped_storage().data_ptr()
        return next((i for i, storage in enumerate(self.storages) if storage.data_ptr() == ptr), None)

    def release(self, tensor: torch.Tensor) -> None:
        """Give back the slot of a batch that is not sent after all (no-op for other memory)."""
        index = self._index(tensor)
        if index is not None:
            self.flags[index][0] = _FREE

    def reference(self, tensor: torch.Tensor) -> SlotVideo | None:
        """The slot reference for ``tensor`` (a view of memory from :meth:`alloc`); None when it
        does not live in a slot (it then travels the usual way)."""
        index = self._index(tensor)
        if index is None:
            return None
        first, self.sent[index] = not self.sent[index], True
        return SlotVideo(self.pid, index, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
                         self.storages[index] if first else None)


_RING: SlotRing | None = None


def worker_ring(max_slots: int) -> SlotRing:
    """This process's ring (one per DataLoader worker, shared by the streams it drives)."""
    global _RING
    if _RING is None or _RING.pid != os.getpid():
        _RING = SlotRing(max_slots)
    return _RING


class SlotReceiver:
    """Main-process side: slot storages by (worker pid, slot), and the slots lent to the caller."""

    def __init__(self):
        # (pid, slot) -> (storage, numpy view of its busy flag, use count when nothing else refers to it)
        self.slots: dict[tuple[int, int], tuple[torch.UntypedStorage, object, int]] = {}
        self.lent: set[tuple[int, int]] = set()
        self.resolved = 0  # batches received through slots

    def resolve(self, ref: SlotVideo) -> torch.Tensor:
        """The batch video ``ref`` points at (a view of the slot, no copy)."""
        key = (ref.pid, ref.index)
        if ref.storage is not None:
            storage, ref.storage = ref.storage, None
            flag = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (1,)).numpy()
            self.slots[key] = (storage, flag, _use_count(storage))
        if key not in self.slots:
            raise RuntimeError(f"loader worker {ref.pid} sent slot {ref.index} by reference before sending it")
        if key in self.lent:
            raise RuntimeError(f"loader worker {ref.pid} reused slot {ref.index} before the main process freed it")
        self.lent.add(key)
        self.resolved += 1
        return torch.empty(0, dtype=torch.uint8).set_(self.slots[key][0], ref.offset, ref.shape, ref.stride)

    def release_unused(self) -> int:
        """Hand back every lent slot nothing refers to any more; returns how many."""
        freed = [key for key in self.lent if _use_count(self.slots[key][0]) <= self.slots[key][2]]
        for key in freed:
            self.slots[key][1][0] = _FREE
            self.lent.discard(key)
        return len(freed)
