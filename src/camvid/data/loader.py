"""Training and evaluation loaders: WebDataset shard streams, plain directory data sets, the CVD mix.

Streams (:class:`ClipStream`, :class:`MixedStream`) are ``IterableDataset``s that batch inside
each worker and are read with ``DataLoader(batch_size=None)``. Work is split first by rank, then
by DataLoader worker:

- ``resampled=True`` (training default): every (rank, worker) draws shards with replacement from
  its own generator seeded by ``(seed, rank, worker, epoch)``: endless, independent streams; the
  epoch is cut at ``epoch_length`` batches per rank (webdataset ``with_epoch``); without
  ``epoch_length`` the stream never ends (step-based training loops).
- ``resampled=False`` (evaluation default): each rank reads ``units[rank::world_size]`` and each
  worker a further ``[worker::num_workers]`` slice: disjoint, every sample exactly once per epoch.

Every random choice of a sample (stride, window, conditioning frame, homography) comes from a
generator seeded by ``(seed, rank, worker, epoch, sample_number)``, so a run is reproducible for
a fixed seed, world size and worker count.

Resume: construct the loader with the epoch and ``skip_batches`` = batches the training loop had
consumed in that epoch (per rank). Skipped samples are dropped *before* decoding, and the
per-sample seeds do not depend on what was skipped, so the resumed stream continues exactly where
the interrupted one was (as long as no bad sample sat inside the skipped part).

Bad samples inside otherwise good data (no cameras, invalid pose rows, a missing or corrupt frame,
a clip too short, the cut-off end of a truncated tar, an unreadable shard) are skipped with a
warning naming the shard member and counted by reason (:mod:`camvid.data.health`). Each batch
carries its worker's running counts; the :class:`StreamLoader` pops them into ``loader.health``,
which sums them over workers (and :func:`camvid.data.health.merge_reports` over ranks). More than
``max_skip_fraction`` skipped stops the run with an error naming the worst shards. Bad roots and
empty data raise at once.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from camvid.data.batches import normalize_video
from camvid.data.clips import BadSample, Clip, open_re10k_clip, open_shard_sample, open_webvid_clip
from camvid.data.decode import announce_backend, set_decode_threads
from camvid.data.grouping import group_batches, group_prefetch, in_loader_order, resolve_handoff_group
from camvid.data.handoff import SlotReceiver, SlotVideo, slots_supported, worker_ring
from camvid.data.health import HEALTH_KEY, DataHealth, SkipCounter, SkipEvent
from camvid.data.layout import Re10kClip, WebVidClip, list_re10k_clips, list_webvid_clips
from camvid.data.readahead import read_ahead
from camvid.data.samples import PAIRINGS, SampleSpec, collate, make_sample, num_views
from camvid.data.shards import (
    ShardMember,
    ShardRef,
    index_shards,
    read_manifest,
    read_shard,
    shard_refs,
    shard_urls,
)
from camvid.data.workers import decode_threads as decode_threads_for
from camvid.data.workers import effective_workers

__all__ = [
    "ClipStream",
    "MixedStream",
    "StreamLoader",
    "Re10kDirectoryDataset",
    "WebVidDirectoryDataset",
    "ShardMapDataset",
    "resolve_units",
    "dist_info",
    "build_dataloader",
    "build_synthetic_dataloader",
]

# Exceptions that mark one bad sample; anything else is a bug and propagates.
_BAD_SAMPLE = (ValueError, FileNotFoundError, IndexError, OSError, KeyError, UnicodeDecodeError)


def _reason(err: Exception) -> str:
    return err.reason if isinstance(err, BadSample) else "other"


_TAGS = {"units": 1, "order": 2, "shuffle": 3, "mix": 4}


def _seeded(*parts: int, tag: str) -> random.Random:
    """A ``random.Random`` seeded from integers (``hash`` of strings is salted per process)."""
    state = np.random.SeedSequence([*(int(p) for p in parts), _TAGS[tag]]).generate_state(2)
    return random.Random(int(state[0]) << 32 | int(state[1]))


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values win; then RANK / WORLD_SIZE from the environment; then torch.distributed."""
    if rank is None:
        if "RANK" in os.environ:
            rank = int(os.environ["RANK"])
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
        else:
            rank = 0
    if world_size is None:
        if "WORLD_SIZE" in os.environ:
            world_size = int(os.environ["WORLD_SIZE"])
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size = torch.distributed.get_world_size()
        else:
            world_size = 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return rank, world_size


def _shard_dirs(root: Path, split: str) -> list[Path] | None:
    for cand in (root, root / split, root / "shards" / split, root / "shards"):
        if (cand / "manifest.json").is_file():
            return [cand]
        parts = sorted(p for p in cand.glob("part-*") if (p / "manifest.json").is_file())
        if parts:  # written by a SLURM array (slurm/data_prep.sbatch): one shard directory per task
            return parts
    return None


def resolve_units(root: str | Path, split: str = "train", source: str = "re10k") -> tuple[str, list]:
    """What to stream from ``root``: ``("shards", [ShardRef])`` when a ``manifest.json`` sits in
    ``root``, ``root/<split>``, ``root/shards/<split>`` or ``root/shards`` (or in their ``part-*``
    subfolders), else ``("directory", clips)`` from the RealEstate10K / WebVid layout.
    ``source="any"`` accepts shards of either kind."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data root does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(
            f"data root is a file, not a directory: {root}; point data.root at the folder that holds "
            "manifest.json (or shards/<split>/, or the RealEstate10K train/ and test/ folders)")
    dirs = _shard_dirs(root, split)
    if dirs is not None:
        refs, kinds = [], set()
        for d in dirs:
            kinds.add(read_manifest(d).get("source"))
            refs.extend(shard_refs(d))
        wanted = {"re10k": {"re10k", None}, "webvid": {"webvid", "re10k", None}}.get(source)
        if wanted is not None and not kinds <= wanted:
            raise ValueError(f"{dirs[0]}: shards of source {sorted(map(str, kinds))} but this data config reads "
                             f"{source!r} (RealEstate10K pairings need cameras; WebVid shards have none)")
        if not refs or all(r.count == 0 for r in refs):
            raise ValueError(f"all {len(refs)} shard(s) listed under {root} hold no samples (manifest counts are 0); "
                             "the preparation skipped every clip: see summary.json beside the shards")
        return "shards", refs
    for cand in (root, root / split, root / "shards" / split, root / "shards"):
        tars = sorted(cand.glob("*.tar")) + sorted(cand.glob("part-*/*.tar"))
        if tars:
            raise FileNotFoundError(
                f"{cand}: {len(tars)} .tar file(s) but no manifest.json; the loader only reads shards listed in a "
                "manifest (written last by data_prep/make_shards.py, re10k.py or webvid.py, so a missing one means "
                "the preparation did not finish: re-run it, it resumes)")
    if source == "re10k":
        return "directory", list_re10k_clips(root, split)
    if source in ("webvid", "any"):
        return "directory", list_webvid_clips(root)
    raise ValueError(f"unknown source {source!r}; expected 're10k' or 'webvid'")


def _open_unit(item) -> Clip:
    if isinstance(item, ShardMember):
        return open_shard_sample(item.load())
    if isinstance(item, Re10kClip):
        return open_re10k_clip(item)
    if isinstance(item, WebVidClip):
        return open_webvid_clip(item)
    return open_shard_sample(item)


def _shard_of(item) -> str:
    if isinstance(item, ShardMember):
        return item.url
    if isinstance(item, Re10kClip):
        return str(item.pose_path)
    if isinstance(item, WebVidClip):
        return str(item.path)
    return str(item.get("__url__", "<shard>"))


def _where(item) -> str:
    if isinstance(item, ShardMember):
        return f"{item.url}:{item.key}"
    if isinstance(item, Re10kClip):
        return str(item.pose_path)
    if isinstance(item, WebVidClip):
        return str(item.path)
    return f"{item.get('__url__', '<shard>')}:{item.get('__key__', '<no key>')}"


class _BatchBuffer:
    """Where the batch being built goes, in a worker that hands video over through
    shared-memory slots (:mod:`camvid.data.handoff`): the batch's slot is taken when its first
    sample is made, each sample decodes straight into its place (``place``), and ``collate``
    gets the whole slot (``take``). Without a ring (in the main process) everything is None."""

    def __init__(self, ring, shape: tuple[int, ...]):
        self.ring, self.shape = ring, shape  # shape: (batch, views, T, H, W, 3)
        self.tensor: torch.Tensor | None = None
        self.filled = 0  # samples of the current batch already made

    def place(self) -> torch.Tensor | None:
        if self.ring is None:
            return None
        if self.tensor is None:
            self.tensor = self.ring.alloc(self.shape)
        return self.tensor[self.filled]

    def take(self) -> torch.Tensor | None:
        tensor, self.tensor, self.filled = self.tensor, None, 0
        return tensor

    def drop(self) -> None:
        tensor = self.take()
        if tensor is not None:
            self.ring.release(tensor)


class ClipStream(IterableDataset):
    """Batches of one pairing from shards (``kind="shards"``, units = shard urls) or from a
    directory layout (``kind="directory"``, units = clips)."""

    def __init__(
        self,
        units: list,
        kind: str,
        spec: SampleSpec,
        pairing: str = "none",
        batch_size: int = 1,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        resampled: bool = True,
        shuffle_buffer: int = 100,
        epoch_length: int | None = None,
        skip_batches: int = 0,
        epoch: int = 0,
        drop_last: bool = True,
        max_skip_fraction: float = 0.1,
        skip_check_min_samples: int = 100,
        name: str = "data",
        read_ahead: int = 2,
    ):
        if kind not in ("shards", "directory"):
            raise ValueError(f"kind must be 'shards' or 'directory', got {kind!r}")
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")
        if not units:
            raise ValueError("ClipStream: no shards/clips to read")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1 batches (or None), got {epoch_length}")
        if skip_batches < 0:
            raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
        self.units, self.kind, self.spec, self.pairing = list(units), kind, spec, pairing
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = dist_info(rank, world_size)
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.epoch_length, self.skip_batches, self.epoch = epoch_length, skip_batches, epoch
        self.drop_last = drop_last
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.max_skip_fraction, self.skip_check_min_samples, self.name = (
            max_skip_fraction, skip_check_min_samples, name)
        self.counters: dict[str, SkipCounter] = {}  # this process's counters, one per worker identity
        # > 0: workers hand video over through that many reused shared-memory slots each
        # (camvid.data.handoff); set by StreamLoader, which turns the references back into tensors
        self.handoff_slots = 0
        # > 1: workers hand that many batches over per DataLoader item (camvid.data.grouping); set by
        # StreamLoader, which unpacks them in the ungrouped order
        self.handoff_group = 1
        # > 0: a DataLoader worker reads that many samples ahead in a thread (camvid.data.readahead)
        self.read_ahead = read_ahead
        # threads a DataLoader worker decodes a clip's frames with (camvid.data.decode); set by
        # StreamLoader while its workers start, never used in the main process
        self.decode_threads = 1
        if not resampled and len(self.units) < self.world_size:
            raise ValueError(
                f"{len(self.units)} {kind} units cannot be split over {self.world_size} ranks without "
                "resampling; write smaller shards (make_shards.py --shard-size) or use resampled=True"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def skipped(self) -> int:
        """Samples skipped in this process (``num_workers=0``); workers report through batches."""
        return sum(c.skipped for c in self.counters.values())

    def _counter(self, worker: int) -> tuple[str, SkipCounter]:
        ident = f"{self.name}/rank{self.rank}/worker{worker}"
        if ident not in self.counters:
            self.counters[ident] = SkipCounter(ident, self.max_skip_fraction, self.skip_check_min_samples)
        return ident, self.counters[ident]

    # ---- per-worker plumbing
    @staticmethod
    def _worker() -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _share(self, total: int, worker: int, num_workers: int) -> int:
        """Worker ``w``'s part of ``total`` batches when the DataLoader reads workers round-robin."""
        return max(0, (total - worker + num_workers - 1) // num_workers)

    def _unit_source(self, worker: int, num_workers: int):
        def source() -> Iterator:
            if self.resampled:
                # Each rank resamples from its own part of the units, so ranks never train on the same
                # clip; with fewer units than ranks the split happens per sample (see _expand_shards).
                pool = self.units[self.rank :: self.world_size] if self._split_units else self.units
                rng = _seeded(self.seed, self.rank, worker, self.epoch, tag="units")
                while True:
                    yield rng.choice(pool)
            else:
                mine = self.units[self.rank :: self.world_size][worker::num_workers]
                if self.spec.train:
                    _seeded(self.seed, self.rank, worker, self.epoch, tag="order").shuffle(mine)
                yield from mine

        return source

    @property
    def _split_units(self) -> bool:
        return len(self.units) >= self.world_size

    def _expand_shards(self, units: Iterator[ShardRef]) -> Iterator:
        """Shard refs -> samples (and :class:`SkipEvent` records). With fewer shards than ranks,
        rank r keeps the samples at positions r, r + world, ... of every shard, so ranks still see
        disjoint clips (and only rank 0 counts a shard's skips, so ranks do not count them twice)."""
        per_sample = self.world_size > 1 and self.resampled and not self._split_units
        barren, seen_any = 0, False
        for unit in units:
            got, position = 0, 0
            for item in read_shard(unit):
                if isinstance(item, SkipEvent):
                    if not per_sample or self.rank == 0:
                        yield item
                    continue
                position += 1
                seen_any = True
                if per_sample and (position - 1) % self.world_size != self.rank:
                    continue
                got += 1
                yield item
            barren = 0 if got else barren + 1
            if barren >= 100:
                why = ("the data has fewer clips per shard than there are ranks" if seen_any else
                       "none of them held a readable sample (see the skip warnings)")
                raise RuntimeError(
                    f"rank {self.rank} of {self.world_size} found no sample of its own in 100 shards drawn from "
                    f"{len(self.units)}: {why}"
                )

    @staticmethod
    def _opened(skip_samples: int):
        """Items -> ``(number, item, clip)`` or :class:`SkipEvent`, in order: samples are numbered
        (their seeds follow the number), the first ``skip_samples`` dropped unopened (resume), and
        each opened and checked against its metadata (pose file, frame count; no pixels decoded).
        In a worker this runs in the read-ahead thread, ahead of the decoding."""
        def stage(items: Iterator) -> Iterator:
            number = -1
            for item in items:
                if isinstance(item, SkipEvent):
                    yield item
                    continue
                number += 1
                if number < skip_samples:
                    continue
                try:
                    clip = _open_unit(item)
                except _BAD_SAMPLE as err:
                    yield SkipEvent(_reason(err), _shard_of(item), f"{_where(item)}: {err}")
                    continue
                yield number, item, clip

        return stage

    def _samples(self, worker: int, counter: SkipCounter, buffer: _BatchBuffer):
        """Opened clips -> samples (frames decoded into their place in the batch); every skip counted."""
        def stage(opened: Iterator) -> Iterator[dict]:
            for entry in opened:
                if isinstance(entry, SkipEvent):
                    counter.skip(entry)
                    continue
                number, item, clip = entry
                rng = np.random.default_rng([self.seed, self.rank, worker, self.epoch, number])
                try:
                    sample = make_sample(clip, self.spec, rng, self.pairing, buffer.place())
                except _BAD_SAMPLE as err:
                    counter.skip(SkipEvent(_reason(err), _shard_of(item), f"{_where(item)}: {err}"))
                    continue
                counter.ok()
                yield sample

        return stage

    def _ring(self):
        """This worker's shared-memory slots, when the video goes through them."""
        if self.handoff_slots and get_worker_info() is not None and slots_supported():
            return worker_ring(self.handoff_slots)
        return None

    def _buffer(self) -> _BatchBuffer:
        T, (H, W) = self.spec.num_frames, self.spec.out_hw
        return _BatchBuffer(self._ring(), (self.batch_size, num_views(self.pairing), T, H, W, 3))

    def _batches(self, ident: str, counter: SkipCounter, buffer: _BatchBuffer):
        def stage(samples: Iterator[dict]) -> Iterator[dict]:
            group: list[dict] = []
            try:
                for sample in samples:
                    group.append(sample)
                    buffer.filled = len(group)
                    if len(group) == self.batch_size:
                        yield self._with_health(collate(group, buffer.take()), ident, counter, buffer.ring)
                        group = []
                if group and not self.drop_last:
                    yield self._with_health(collate(group, buffer.take()), ident, counter, buffer.ring)
            finally:
                buffer.drop()  # a batch left unfinished (end of the epoch) gives its slot back

        return stage

    @staticmethod
    def _with_health(batch: dict, ident: str, counter: SkipCounter, ring=None) -> dict:
        batch[HEALTH_KEY] = {ident: counter.report()}  # running counts; StreamLoader pops them
        if get_worker_info() is not None:
            # Small tensors travel inside the pickle as numpy arrays: each tensor would otherwise get
            # its own shared-memory segment, which costs more than the data (StreamLoader converts back).
            for name, value in batch.items():
                if isinstance(value, torch.Tensor) and name != "video":
                    batch[name] = value.numpy()
            ref = ring.reference(batch["video"]) if ring is not None else None
            if ref is not None:
                batch["video"] = ref
        return batch

    def iter_worker(self, worker: int, num_workers: int, worker_skip: int | None = None) -> Iterator[dict]:
        """This worker's batches (exposed so :class:`MixedStream` can drive two streams at once).

        ``worker_skip`` (this worker's own batches to skip) also disables the epoch cut: the caller
        then owns the epoch."""
        own_epoch = worker_skip is None
        if own_epoch:
            # After skipping, the DataLoader still asks worker 0 first, but the next global batch
            # belongs to worker ``skip % num_workers`` of the uninterrupted run: rotate identities.
            worker = (worker + self.skip_batches) % num_workers
            skip = self._share(self.skip_batches, worker, num_workers)
        else:
            skip = worker_skip
        ident, counter = self._counter(worker)
        if get_worker_info() is not None:
            set_decode_threads(self.decode_threads)
        stages = [self._unit_source(worker, num_workers)]
        if self.kind == "shards":
            stages.append(self._expand_shards)
        if self.spec.train and self.shuffle_buffer > 1:
            rng = _seeded(self.seed, self.rank, worker, self.epoch, tag="shuffle")
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 10), rng=rng))
        stages.append(self._opened(skip * self.batch_size))
        if self.read_ahead and get_worker_info() is not None:
            # tar reading, pose parsing and checks of the next samples overlap this one's decoding
            stages.append(partial(read_ahead, depth=self.read_ahead))
        buffer = self._buffer()  # shared by the two stages: samples are decoded into their place in the batch
        stages.append(self._samples(worker, counter, buffer))
        stages.append(self._batches(ident, counter, buffer))
        pipeline = wds.DataPipeline(*stages)
        if self.epoch_length is not None and own_epoch:
            remaining = self._share(self.epoch_length, worker, num_workers) - skip
            if remaining <= 0:
                return _with_final_report(iter(()), {ident: counter})  # with_epoch(0) would mean "no limit"
            pipeline = pipeline.with_epoch(nbatches=remaining)
            if not self.resampled:
                pipeline.repetitions = 1  # a finite pass is not repeated to fill the epoch
        return _with_final_report(iter(pipeline), {ident: counter}) if own_epoch else iter(pipeline)

    def __iter__(self) -> Iterator[dict]:
        return _grouped(self.iter_worker(*self._worker()), self.handoff_group)


class MixedStream(IterableDataset):
    """CVD's 7:3 stream: each batch comes from ``first`` with probability ``ratio``, else from
    ``second`` (batches are never mixed, as CVD alternates the two training phases)."""

    def __init__(self, first: ClipStream, second: ClipStream, ratio: float = 0.7, epoch_length: int | None = None,
                 skip_batches: int = 0, seed: int = 0, epoch: int = 0):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"mix ratio must be in [0, 1], got {ratio}")
        if first.batch_size != second.batch_size:
            raise ValueError(f"mixed streams need one batch size, got {first.batch_size} and {second.batch_size}")
        self.first, self.second, self.ratio = first, second, ratio
        self.epoch_length, self.skip_batches, self.seed, self.epoch = epoch_length, skip_batches, seed, epoch
        self.handoff_group = 1  # see ClipStream.handoff_group

    def __iter__(self) -> Iterator[dict]:
        return _grouped(self._batches(), self.handoff_group)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.first.set_epoch(epoch)
        self.second.set_epoch(epoch)

    def _batches(self) -> Iterator[dict]:
        worker, num_workers = ClipStream._worker()
        worker = (worker + self.skip_batches) % num_workers  # see ClipStream.iter_worker
        rng = _seeded(self.seed, self.first.rank, worker, self.epoch, tag="mix")
        skip = self.first._share(self.skip_batches, worker, num_workers)
        picks = [rng.random() < self.ratio for _ in range(skip)]
        # Each sub-stream skips exactly the batches it had served before the interruption.
        its = [
            self.first.iter_worker(worker, num_workers, worker_skip=sum(picks)),
            self.second.iter_worker(worker, num_workers, worker_skip=skip - sum(picks)),
        ]
        total = None if self.epoch_length is None else self.first._share(self.epoch_length, worker, num_workers) - skip
        served = 0
        alive = [True, True]
        while any(alive) and (total is None or served < total):
            choice = 0 if rng.random() < self.ratio else 1
            if not alive[choice]:
                choice = 1 - choice
            try:
                batch = next(its[choice])
            except StopIteration:
                alive[choice] = False
                continue
            batch["source"] = "re10k_fold" if choice == 0 else "webvid_homography"
            served += 1
            yield batch
        counters = dict([self.first._counter(worker), self.second._counter(worker)])
        yield from _with_final_report(iter(()), counters)


HEALTH_ONLY = "__health_only__"


def _with_final_report(batches: Iterator[dict], counters: dict[str, SkipCounter]) -> Iterator[dict]:
    """The batches, then one item carrying only the final skip counts: samples skipped after a
    worker's last batch would otherwise never reach the main process (StreamLoader drops the item;
    it comes after the worker's last batch, so the round-robin order of batches is unchanged)."""
    yield from batches
    if get_worker_info() is not None:  # in the main process StreamLoader reads the counters directly
        yield {HEALTH_ONLY: True, HEALTH_KEY: {ident: c.report() for ident, c in counters.items()}}


def _grouped(items: Iterator[dict], group: int) -> Iterator[dict]:
    """In a DataLoader worker with ``group > 1``: ``group`` batches per DataLoader item
    (:mod:`camvid.data.grouping`; StreamLoader unpacks them); otherwise ``items`` unchanged."""
    info = get_worker_info()
    if info is None or group <= 1:
        return items
    return group_batches(items, group, info.id, is_batch=lambda item: not item.get(HEALTH_ONLY, False))


def _streams(dataset) -> list:
    return [dataset.first, dataset.second] if isinstance(dataset, MixedStream) else [dataset]


def _local_reports(dataset) -> dict[str, dict]:
    return {ident: c.report() for st in _streams(dataset) for ident, c in getattr(st, "counters", {}).items()}


class _MapDataset(Dataset):
    def __init__(self, clips: list, spec: SampleSpec, pairing: str, seed: int):
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")
        self.clips, self.spec, self.pairing, self.seed, self.epoch = clips, spec, pairing, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        """One sample with ``video`` as float32 in [-1, 1] (evaluation reads these one at a time)."""
        rng = np.random.default_rng([self.seed, index, self.epoch])
        sample = make_sample(_open_unit(self.clips[index]), self.spec, rng, self.pairing)
        sample["video"] = normalize_video(sample["video"])
        return sample

    collate = staticmethod(collate)


class Re10kDirectoryDataset(_MapDataset):
    """Map-style data set over the RealEstate10K directory layout (eval and tests). Errors on a
    bad clip name the file; samples are a pure function of ``(seed, index, epoch)``."""

    def __init__(self, root: str | Path, split: str = "test", num_frames: int = 16, height: int = 256,
                 width: int = 256, stride_min: int = 8, stride_max: int = 8, train: bool = False,
                 random_cond: bool = True, pairing: str = "none", seed: int = 0):
        spec = SampleSpec(num_frames, height, width, stride_min, stride_max, train, random_cond)
        super().__init__(list_re10k_clips(root, split), spec, pairing, seed)


class ShardMapDataset(_MapDataset):
    """Map-style access to shards (RealEstate10K or WebVid) through an index of tar offsets.
    ``shard_dir`` is one folder with a manifest or a list of them (the ``part-*`` of a prepared split)."""

    def __init__(self, shard_dir: str | Path | list, num_frames: int = 16, height: int = 256, width: int = 256,
                 stride_min: int = 8, stride_max: int = 8, train: bool = False, random_cond: bool = True,
                 pairing: str = "none", homography_strength: float = 1.0, seed: int = 0):
        spec = SampleSpec(num_frames, height, width, stride_min, stride_max, train, random_cond, homography_strength)
        dirs = shard_dir if isinstance(shard_dir, list | tuple) else [shard_dir]
        super().__init__(index_shards([u for d in dirs for u in shard_urls(d)]), spec, pairing, seed)


class WebVidDirectoryDataset(_MapDataset):
    """Map-style data set over the WebVid layout (CSV + mp4 or frame folders)."""

    def __init__(self, root: str | Path, num_frames: int = 16, height: int = 256, width: int = 256,
                 stride_min: int = 1, stride_max: int = 4, train: bool = False, pairing: str = "none",
                 homography_strength: float = 1.0, seed: int = 0, csv_name: str = "webvid.csv"):
        spec = SampleSpec(num_frames, height, width, stride_min, stride_max, train, True, homography_strength)
        super().__init__(list_webvid_clips(root, csv_name), spec, pairing, seed)


def _as_is(batch):
    return batch  # batches are built in the workers; numpy fields become tensors in StreamLoader


class StreamLoader(DataLoader):
    """A DataLoader over a stream whose batches carry their worker's skip counts: it pops them
    (``batch["data_health"]``) into ``self.health`` (a :class:`DataHealth`, summed over workers)
    and stops the run when the sum exceeds ``max_skip_fraction``.

    With workers, video arrives through reused shared-memory slots (:mod:`camvid.data.handoff`):
    each worker keeps up to ``(prefetch_factor + 2) * handoff_group + 2`` (batches in flight, the
    group being handed out, the batch the caller holds and the one before it, as the previous batch
    is still referenced until the caller takes the next); a batch the caller keeps longer keeps its
    slot, and its worker then uses a fresh one. ``handoff_group`` > 1: each DataLoader item carries
    that many batches (:mod:`camvid.data.grouping`), unpacked here in the ungrouped order.
    ``decode_threads``: threads each worker decodes a clip's frames with (:mod:`camvid.data.decode`;
    the main process always decodes on its own thread)."""

    def __init__(self, dataset, *, health: DataHealth, handoff_group: int = 1, decode_threads: int = 1, **kwargs):
        super().__init__(dataset, batch_size=None, collate_fn=_as_is, **kwargs)
        for name, value in (("handoff_group", handoff_group), ("decode_threads", decode_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.health = health
        self.slot_receiver: SlotReceiver | None = None
        self.handoff_group = handoff_group if self.num_workers else 1
        self.handoff_slots = ((self.prefetch_factor or 2) + 2) * self.handoff_group + 2 if self.num_workers else 0
        self.decode_threads = decode_threads if self.num_workers else 1

    def _start(self):
        """The DataLoader iterator; its workers (started here) hand video over through slots. The
        streams carry the setting only while the workers start, so another DataLoader over the
        same data set (which would not turn slot references back into tensors) never gets it."""
        streams = _streams(self.dataset)
        for stream in streams:
            stream.handoff_slots, stream.decode_threads = self.handoff_slots, self.decode_threads
        self.dataset.handoff_group = self.handoff_group
        try:
            return super().__iter__()
        finally:
            for stream in streams:
                stream.handoff_slots, stream.decode_threads = 0, 1
            self.dataset.handoff_group = 1

    def __iter__(self):
        if self.slot_receiver is None or not self.persistent_workers:  # persistent workers keep their slots
            self.slot_receiver = SlotReceiver()  # kept on the loader for inspection (tests, benchmarks)
        slots = self.slot_receiver
        items = self._start()
        if self.handoff_group > 1:
            items = in_loader_order(items, self.num_workers)
        for batch in items:
            slots.release_unused()  # slots of earlier batches the caller has let go of
            for name, value in batch.items():
                if isinstance(value, np.ndarray):
                    batch[name] = torch.from_numpy(value)
            if isinstance(batch.get("video"), SlotVideo):
                batch["video"] = slots.resolve(batch["video"])
                if self.pin_memory:  # a pinned copy; the slot goes back to its worker
                    batch["video"] = batch["video"].pin_memory()
            snapshots = batch.pop(HEALTH_KEY, None)
            if snapshots and self.health.update(snapshots):
                self.health.check()
            if not batch.pop(HEALTH_ONLY, False):
                yield batch
        if self.num_workers == 0:
            self.health.update(_local_reports(self.dataset))
            self.health.check()


def build_dataloader(
    root: str,
    split: str = "train",
    pairing: str = "none",
    num_frames: int = 16,
    height: int = 256,
    width: int = 256,
    stride_min: int | None = None,
    stride_max: int | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 100,
    epoch_length: int | None = None,
    train: bool = True,
    webvid_root: str | None = None,
    mix_ratio: float = 0.7,
    homography_strength: float = 1.0,
    random_cond: bool = True,
    resampled: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    skip_batches: int = 0,
    epoch: int = 0,
    max_skip_fraction: float = 0.1,
    skip_check_min_samples: int = 100,
    pin_memory: bool = False,
    cap_workers: bool = True,
    handoff_group: int | str = "auto",
    decode_threads: int | str = "auto",
) -> StreamLoader:
    """The loader a Hydra ``data`` config instantiates.

    ``pairing``: ``none`` (single RealEstate10K videos), ``re10k_fold``, ``webvid_homography``
    (``root`` is then the WebVid root/shards), or ``cvd_mix`` (RE10K fold pairs from ``root`` and
    WebVid homography pairs from ``webvid_root``, ``mix_ratio`` : 1 - ``mix_ratio`` by batch).
    Strides default to [1, 10] for training and 8 for evaluation. ``resampled`` defaults to
    ``train``; resampled streams without ``epoch_length`` (batches per rank per epoch) are endless.
    Batches hold uint8 ``video`` (normalise with :func:`camvid.data.batches.to_device`). Once
    ``skip_check_min_samples`` samples were attempted, more than ``max_skip_fraction`` of them
    skipped raises :class:`camvid.data.health.TooManySkips`. ``num_workers`` is capped at this
    process's share of the CPU cores (:mod:`camvid.data.workers`, with a log line) unless
    ``cap_workers=False``; ``loader.num_workers`` is the number started, ``loader.requested_workers``
    the one asked for. ``handoff_group``: training batches a worker hands over per DataLoader item
    (:mod:`camvid.data.grouping`; ``"auto"``: with 1 worker enough for 4 clips, with more none; 1:
    one per item); the batches and their order do not depend on it. ``decode_threads``: threads each
    worker decodes a clip's JPEG frames with (:func:`camvid.data.workers.decode_threads`; ``"auto"``:
    the worker's part of the cores, e.g. 2 for a lone worker on 2 cores; the main process always
    uses 1); the pixels do not depend on it.
    """
    if stride_min is None:
        stride_min = 1 if train else 8
    if stride_max is None:
        stride_max = 10 if train else 8
    if resampled is None:
        resampled = train
    workers = effective_workers(num_workers, cap_workers, announce=True)
    group = resolve_handoff_group(handoff_group, batch_size * num_views(pairing), workers)  # cvd_mix: 2 views
    threads = decode_threads_for(decode_threads, workers)
    spec = SampleSpec(num_frames, height, width, stride_min, stride_max, train, random_cond, homography_strength)
    common = dict(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, resampled=resampled,
                  shuffle_buffer=shuffle_buffer, epoch=epoch, drop_last=train, max_skip_fraction=max_skip_fraction,
                  skip_check_min_samples=skip_check_min_samples)

    def stream(path: str, source: str, pair: str, **extra) -> ClipStream:
        kind, units = resolve_units(path, split, source)
        return ClipStream(units, kind, spec, pair, name=source, **common, **extra)

    if pairing == "cvd_mix":
        if webvid_root is None:
            raise ValueError("pairing=cvd_mix needs webvid_root (WebVid shards or directory) besides root")
        dataset: IterableDataset = MixedStream(
            stream(root, "re10k", "re10k_fold"), stream(webvid_root, "webvid", "webvid_homography"),
            ratio=mix_ratio, epoch_length=epoch_length, skip_batches=skip_batches, seed=seed, epoch=epoch,
        )
    elif pairing == "webvid_homography":
        dataset = stream(root, "webvid", pairing, epoch_length=epoch_length, skip_batches=skip_batches)
    elif pairing in ("none", "re10k_fold"):
        dataset = stream(root, "re10k", pairing, epoch_length=epoch_length, skip_batches=skip_batches)
    else:
        raise ValueError(f"unknown pairing {pairing!r}; expected one of {(*PAIRINGS, 'cvd_mix')}")
    health = DataHealth(max_skip_fraction, skip_check_min_samples)
    announce_backend()  # which JPEG decoder (once per process; a warning for the slower PIL fallback)
    loader = StreamLoader(dataset, health=health, num_workers=workers, persistent_workers=False,
                          pin_memory=pin_memory, prefetch_factor=group_prefetch(group) if workers else None,
                          handoff_group=group, decode_threads=threads)
    loader.requested_workers = num_workers
    return loader


def build_synthetic_dataloader(
    root: str,
    num_clips: int = 20,
    clip_frames: int = 32,
    render_height: int = 64,
    render_width: int = 64,
    data_seed: int = 0,
    webvid_clips: int = 0,
    texture_size: int = 512,
    **loader_kwargs,
) -> DataLoader:
    """:func:`build_dataloader` over the embedded synthetic set, rendering it into ``root`` first
    if it is not there yet (the ``data=synthetic`` config). ``pairing=cvd_mix`` and
    ``webvid_homography`` read the WebVid-like clips from ``root/webvid``."""
    from camvid.data.synthetic_writer import ensure_synthetic_dataset

    pairing = loader_kwargs.get("pairing", "none")
    if pairing in ("cvd_mix", "webvid_homography") and webvid_clips < 1:
        raise ValueError(f"pairing={pairing} on synthetic data needs webvid_clips >= 1")
    ensure_synthetic_dataset(root, num_clips, clip_frames, render_height, render_width, data_seed, webvid_clips,
                             texture_size)
    if pairing == "webvid_homography":
        return build_dataloader(str(Path(root) / "webvid"), **loader_kwargs)
    if pairing == "cvd_mix":
        loader_kwargs.setdefault("webvid_root", str(Path(root) / "webvid"))
    return build_dataloader(root, **loader_kwargs)
