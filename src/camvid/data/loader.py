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

Bad samples inside otherwise good data (malformed pose line, missing frame, clip too short) are
skipped with a warning naming the shard member and counted in ``stream.skipped`` (per worker
process: with ``num_workers > 0`` read the warnings). Bad roots and empty data raise at once.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from camvid.data.clips import Clip, open_re10k_clip, open_shard_sample, open_webvid_clip
from camvid.data.layout import Re10kClip, WebVidClip, list_re10k_clips, list_webvid_clips
from camvid.data.samples import PAIRINGS, SampleSpec, collate, make_sample
from camvid.data.shards import ShardMember, index_shards, shard_urls

__all__ = [
    "ClipStream",
    "MixedStream",
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


def resolve_units(root: str | Path, split: str = "train", source: str = "re10k") -> tuple[str, list]:
    """What to stream from ``root``: ``("shards", urls)`` when a ``manifest.json`` sits in ``root``,
    ``root/<split>``, ``root/shards/<split>`` or ``root/shards`` (or in their ``part-*`` subfolders), else ``("directory", clips)`` from
    the RealEstate10K / WebVid layout."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data root does not exist: {root}")
    for cand in (root, root / split, root / "shards" / split, root / "shards"):
        if (cand / "manifest.json").is_file():
            return "shards", shard_urls(cand)
        parts = sorted(p for p in cand.glob("part-*") if (p / "manifest.json").is_file())
        if parts:  # written by a SLURM array (slurm/data_prep.sbatch): one shard directory per task
            return "shards", [url for part in parts for url in shard_urls(part)]
    if source == "re10k":
        return "directory", list_re10k_clips(root, split)
    if source == "webvid":
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


def _where(item) -> str:
    if isinstance(item, ShardMember):
        return f"{item.url}:{item.key}"
    if isinstance(item, Re10kClip):
        return str(item.pose_path)
    if isinstance(item, WebVidClip):
        return str(item.path)
    return f"{item.get('__url__', '<shard>')}:{item.get('__key__', '<no key>')}"


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
        self.skipped = 0
        if not resampled and len(self.units) < self.world_size:
            raise ValueError(
                f"{len(self.units)} {kind} units cannot be split over {self.world_size} ranks without "
                "resampling; write smaller shards (make_shards.py --shard-size) or use resampled=True"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
                    yield self._wrap(rng.choice(pool))
            else:
                mine = self.units[self.rank :: self.world_size][worker::num_workers]
                if self.spec.train:
                    _seeded(self.seed, self.rank, worker, self.epoch, tag="order").shuffle(mine)
                for unit in mine:
                    yield self._wrap(unit)

        return source

    @property
    def _split_units(self) -> bool:
        return len(self.units) >= self.world_size

    def _expand_shards(self, units: Iterator[dict]) -> Iterator[dict]:
        """Shard urls -> samples. With fewer shards than ranks, rank r keeps the samples at positions
        r, r + world, ... of every shard, so ranks still see disjoint clips."""
        per_sample = self.world_size > 1 and self.resampled and not self._split_units
        expand = wds.tarfile_to_samples(handler=self._tar_handler)
        barren = 0
        for unit in units:
            got = 0
            for position, sample in enumerate(expand(iter([unit]))):
                if per_sample and position % self.world_size != self.rank:
                    continue
                got += 1
                yield sample
            barren = 0 if got else barren + 1
            if barren >= 100:
                raise RuntimeError(
                    f"rank {self.rank} of {self.world_size} found no sample of its own in 100 shards drawn from "
                    f"{len(self.units)}: the data has fewer clips per shard than there are ranks"
                )

    def _wrap(self, unit):
        return {"url": unit} if self.kind == "shards" else unit

    def _tar_handler(self, exn: Exception) -> bool:
        self.skipped += 1
        warnings.warn(f"skipping unreadable shard data: {exn}", stacklevel=2)
        return True

    def _samples(self, worker: int, skip_samples: int):
        def stage(items: Iterator) -> Iterator[dict]:
            for number, item in enumerate(items):
                if number < skip_samples:
                    continue
                rng = np.random.default_rng([self.seed, self.rank, worker, self.epoch, number])
                try:
                    yield make_sample(_open_unit(item), self.spec, rng, self.pairing)
                except _BAD_SAMPLE as err:
                    self.skipped += 1
                    warnings.warn(
                        f"skipping bad sample {_where(item)}: {err} "
                        f"({self.skipped} skipped so far on rank {self.rank}, worker {worker})",
                        stacklevel=2,
                    )

        return stage

    def _batches(self, samples: Iterator[dict]) -> Iterator[dict]:
        group: list[dict] = []
        for sample in samples:
            group.append(sample)
            if len(group) == self.batch_size:
                yield collate(group)
                group = []
        if group and not self.drop_last:
            yield collate(group)

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
        stages = [self._unit_source(worker, num_workers)]
        if self.kind == "shards":
            stages.append(self._expand_shards)
        if self.spec.train and self.shuffle_buffer > 1:
            rng = _seeded(self.seed, self.rank, worker, self.epoch, tag="shuffle")
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 10), rng=rng))
        stages.append(self._samples(worker, skip * self.batch_size))
        stages.append(self._batches)
        pipeline = wds.DataPipeline(*stages)
        if self.epoch_length is not None and own_epoch:
            remaining = self._share(self.epoch_length, worker, num_workers) - skip
            if remaining <= 0:
                return iter(())  # with_epoch(0) would mean "no limit"
            pipeline = pipeline.with_epoch(nbatches=remaining)
            if not self.resampled:
                pipeline.repetitions = 1  # a finite pass is not repeated to fill the epoch
        return iter(pipeline)

    def __iter__(self) -> Iterator[dict]:
        return self.iter_worker(*self._worker())


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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.first.set_epoch(epoch)
        self.second.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
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
        rng = np.random.default_rng([self.seed, index, self.epoch])
        return make_sample(_open_unit(self.clips[index]), self.spec, rng, self.pairing)

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
    """Map-style access to shards (RealEstate10K or WebVid) through an index of tar offsets."""

    def __init__(self, shard_dir: str | Path, num_frames: int = 16, height: int = 256, width: int = 256,
                 stride_min: int = 8, stride_max: int = 8, train: bool = False, random_cond: bool = True,
                 pairing: str = "none", homography_strength: float = 1.0, seed: int = 0):
        spec = SampleSpec(num_frames, height, width, stride_min, stride_max, train, random_cond, homography_strength)
        super().__init__(index_shards(shard_urls(shard_dir)), spec, pairing, seed)


class WebVidDirectoryDataset(_MapDataset):
    """Map-style data set over the WebVid layout (CSV + mp4 or frame folders)."""

    def __init__(self, root: str | Path, num_frames: int = 16, height: int = 256, width: int = 256,
                 stride_min: int = 1, stride_max: int = 4, train: bool = False, pairing: str = "none",
                 homography_strength: float = 1.0, seed: int = 0, csv_name: str = "webvid.csv"):
        spec = SampleSpec(num_frames, height, width, stride_min, stride_max, train, True, homography_strength)
        super().__init__(list_webvid_clips(root, csv_name), spec, pairing, seed)


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
) -> DataLoader:
    """The loader a Hydra ``data`` config instantiates.

    ``pairing``: ``none`` (single RealEstate10K videos), ``re10k_fold``, ``webvid_homography``
    (``root`` is then the WebVid root/shards), or ``cvd_mix`` (RE10K fold pairs from ``root`` and
    WebVid homography pairs from ``webvid_root``, ``mix_ratio`` : 1 - ``mix_ratio`` by batch).
    Strides default to [1, 10] for training and 8 for evaluation. ``resampled`` defaults to
    ``train``; resampled streams without ``epoch_length`` (batches per rank per epoch) are endless.
    """
    if stride_min is None:
        stride_min = 1 if train else 8
    if stride_max is None:
        stride_max = 10 if train else 8
    if resampled is None:
        resampled = train
    spec = SampleSpec(num_frames, height, width, stride_min, stride_max, train, random_cond, homography_strength)
    common = dict(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, resampled=resampled,
                  shuffle_buffer=shuffle_buffer, epoch=epoch, drop_last=train)

    def stream(path: str, source: str, pair: str, **extra) -> ClipStream:
        kind, units = resolve_units(path, split, source)
        return ClipStream(units, kind, spec, pair, **common, **extra)

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
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)


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
