"""DataLoader workers capped at this process's share of the CPU cores (camvid.data.workers): the
number started, the log line that says so, the option that starts the requested number anyway, and
the resume fingerprint that records the number started."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

import camvid.data.workers as workers_mod
from camvid.data.loader import build_dataloader
from camvid.data.workers import available_cores, effective_workers, local_processes, worker_cap
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
