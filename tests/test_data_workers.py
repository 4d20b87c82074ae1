"""DataLoader workers capped at this process's share of the CPU cores (camvid.data.workers): the
number started, the log line that says so, the option that starts the requested number anyway, and
the resume fingerprint that records the number started; the threads each worker decodes with."""

from __future__ import annotations

import logging
import multiprocessing as mp

import numpy as np
import pytest
from omegaconf import OmegaConf

import camvid.data.decode as decode_mod
import camvid.data.loader as loader_mod
import camvid.data.workers as workers_mod
from camvid.data.loader import build_dataloader
from camvid.data.workers import (
    available_cores,
    decode_threads,
    effective_workers,
    local_processes,
    worker_cap,
)
from camvid.training.resume import fingerprint_differences, run_fingerprint
from conftest import jpeg_train_shards

T, H, W = 4, 12, 16


@pytest.mark.parametrize("requested, cap, cores, local, started", [
    (4, True, 2, 1, 2),     # more workers than cores: the cores
    (4, False, 2, 1, 4),    # cap_workers=false: as asked
    (2, True, 2, 1, 2),     # as many as cores: unchanged
    (1, True, 8, 1, 1),
    (0, True, 1, 1, 0),     # in-process loading stays in-process
    (4, True, 16, 8, 2),    # 8 training processes on a 16-core node: 2 cores each
    (4, True, 4, 8, 1),     # fewer cores than processes: still one worker each
])
def test_effective_workers(requested, cap, cores, local, started):
    assert effective_workers(requested, cap, cores=cores, local=local) == started


@pytest.mark.parametrize("bad", [-1, 1.5, "4", True])
def test_effective_workers_refuses_what_is_not_a_worker_count(bad):
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        effective_workers(bad)


def test_the_cap_reads_the_affinity_and_the_local_world_size(monkeypatch):
    monkeypatch.setattr(workers_mod.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert available_cores() == 3 and worker_cap() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_processes() == 2 and worker_cap() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert local_processes() == 1
    for bad, message in (("two", "is not an integer"), ("0", "must be >= 1")):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", bad)
        with pytest.raises(ValueError, match=f"LOCAL_WORLD_SIZE.*{message}"):
            worker_cap()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return jpeg_train_shards(tmp_path_factory.mktemp("workers"), num_clips=2, frames=T, height=H, width=W,
                             seed=3, shard_size=1)


def _loader(shards, **kw):
    return build_dataloader(str(shards), num_frames=T, height=H, width=W, stride_min=1, stride_max=1, batch_size=1,
                            shuffle_buffer=1, epoch_length=3, seed=1, **kw)


def test_loader_starts_at_most_one_worker_per_core_and_says_so(shards, monkeypatch, caplog):
    monkeypatch.setattr(workers_mod, "available_cores", lambda: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with caplog.at_level(logging.WARNING, logger="camvid.data.workers"):
        loader = _loader(shards, num_workers=2)
    assert (loader.num_workers, loader.requested_workers) == (1, 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "camvid.data.workers"]
    assert len(lines) == 1
    assert "num_workers=2 but only 1 CPU cores" in lines[0] and "starting 1 worker(s)" in lines[0]
    assert "trainer.cap_workers=false" in lines[0]
    batches = list(loader)  # the capped loader delivers the whole epoch
    assert len(batches) == 3 and all(b["video"].shape[:2] == (1, T) for b in batches)


def test_cap_workers_false_starts_the_requested_workers_without_a_line(shards, monkeypatch, caplog):
    monkeypatch.setattr(workers_mod, "available_cores", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="camvid.data.workers"):
        loader = _loader(shards, num_workers=2, cap_workers=False)
    assert (loader.num_workers, loader.requested_workers) == (2, 2)
    assert not [r for r in caplog.records if r.name == "camvid.data.workers"]
    assert len(list(loader)) == 3


def _train_cfg(num_workers: int, cap: bool | None):
    trainer = {"batch_size": 1, "grad_accum": 1, "num_workers": num_workers}
    if cap is not None:
        trainer["cap_workers"] = cap
    return OmegaConf.create({"trainer": trainer, "seed": 0, "data": {"root": None},
                             "model": {"name": "m"}, "attn": {"name": "a"}, "backbone": {"name": "b"}})


def test_resume_fingerprint_records_the_workers_started(monkeypatch):
    """The stream depends on the workers started: a checkpoint written with 4 workers does not
    resume exactly on a machine where the same config starts 2."""
    monkeypatch.setattr(workers_mod, "available_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    capped = run_fingerprint(_train_cfg(4, None), world_size=1)  # configs without the key cap too
    assert capped["num_workers"] == 2
    forced = run_fingerprint(_train_cfg(4, False), world_size=1)
    assert forced["num_workers"] == 4
    diff = [d for d in fingerprint_differences(forced, capped) if d.startswith("trainer.num_workers")]
    assert diff == ["trainer.num_workers: checkpoint 4, now 2 (workers started: the request capped at this "
                    "process's CPU cores unless trainer.cap_workers=false)"]


@pytest.mark.parametrize("requested, workers, cores, local, threads", [
    ("auto", 1, 2, 1, 2),   # a lone worker on 2 cores: both
    ("auto", 2, 2, 1, 1),   # one core per worker
    ("auto", 3, 8, 1, 2),   # 8 // 3
    ("auto", 1, 16, 8, 2),  # 8 training processes on 16 cores: 2 cores for the rank's one worker
    ("auto", 4, 4, 8, 1),   # fewer cores than processes: still one thread
    (None, 1, 4, 1, 4),
    ("auto", 0, 8, 1, 1),   # the main process decodes on its own thread
    (3, 1, 2, 1, 3),        # as asked
    (3, 0, 2, 1, 1),
])
def test_decode_threads_share_the_cores_among_the_workers(requested, workers, cores, local, threads):
    assert decode_threads(requested, workers, cores=cores, local=local) == threads


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_decode_threads_refuses_what_is_not_a_thread_count(bad):
    with pytest.raises(ValueError, match="data.decode_threads=.*'auto' or an integer >= 1"):
        decode_threads(bad, 1)


@pytest.mark.skipif(mp.get_start_method() != "fork", reason="the workers see the patched stamp only when forked")
def test_a_lone_worker_decodes_on_its_share_of_the_cores_with_the_same_pixels(shards, monkeypatch):
    """2 cores, 1 worker: the worker decodes on 2 threads (the stamp is read in the worker), the main
    process stays on 1, and the batches are those of one thread and of no worker."""
    monkeypatch.setattr(workers_mod, "available_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(decode_mod, "_THREADS", 1)
    plain = loader_mod.ClipStream._with_health

    def stamped(batch, ident, counter, ring=None):
        batch = plain(batch, ident, counter, ring)
        batch["threads_in_worker"] = np.array(decode_mod.decode_threads())
        return batch

    monkeypatch.setattr(loader_mod.ClipStream, "_with_health", staticmethod(stamped))
    runs = {}
    for name, kw in {"auto": dict(num_workers=1), "one": dict(num_workers=1, decode_threads=1),
                     "main": dict(num_workers=0, decode_threads=4)}.items():
        loader = _loader(shards, **kw)
        runs[name] = [(int(b["threads_in_worker"]), b["video"].clone()) for b in loader]
    assert [t for t, _ in runs["auto"]] == [2, 2, 2]
    assert [t for t, _ in runs["one"]] == [1, 1, 1]
    assert [t for t, _ in runs["main"]] == [1, 1, 1]  # no worker: the main process keeps one thread
    assert decode_mod.decode_threads() == 1
    for name in ("one", "main"):
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(runs["auto"], runs[name]))
