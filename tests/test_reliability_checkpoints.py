"""Checkpoints you can trust and resume compatibility (issue: a corrupt checkpoint, a changed setting
or a half-rotated directory never costs a run silently).

One tiny run (checkpoints at steps 2 and 4) is trained per module; each case damages a copy of it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from camvid.training import checkpoint as ckpt_mod
from camvid.training.checkpoint import (
    MANIFEST_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    find_latest,
    list_checkpoints,
    select_resume_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from camvid.training.loop import train
from camvid.training.resume import ResumeMismatchError
from conftest import compose, run_overrides

BASE = ["model=cameractrl", "backbone=tiny_dynamicrafter", "trainer.ckpt_every=2", "trainer.keep_last=5"]
STEP2, STEP4 = "step_00000002", "step_00000004"
# every file accelerate and camvid write into a single-process checkpoint
FILES = ["trainable.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
         "custom_checkpoint_0.pkl", "trainer_state.json", MANIFEST_NAME]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train(compose(run_overrides(data_root, out, *BASE, "trainer.max_steps=4")))
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resume(data_root, run: Path, *extra: str) -> dict:
    return train(compose(run_overrides(data_root, run, *BASE, "trainer.max_steps=4", *extra)))


def test_checkpoint_lists_every_file_with_size_and_hash(trained):
    ckpt = trained / "checkpoints" / STEP4
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(FILES)
    manifest = verify_checkpoint(ckpt)
    assert sorted(manifest["files"]) == sorted(f for f in FILES if f != MANIFEST_NAME)
    assert manifest["step"] == 4
    state = json.loads((ckpt / STATE_NAME).read_text())
    assert state["resume"]["batch_size"] == 1 and state["resume"]["world_size"] == 1


@pytest.mark.parametrize("name", FILES)
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one(name, trained, data_root, tmp_path, caplog):
    run = _copy(trained, tmp_path)
    _truncate(run / "checkpoints" / STEP4 / name)
    # one case trains steps 3-4 again (the result must be the original step 4); the others stop at step 2
    retrain = name == "random_states_0.pkl"
    with caplog.at_level(logging.WARNING):
        summary = _resume(data_root, run, f"trainer.max_steps={4 if retrain else 2}")
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert name in warned and STEP4 in warned, warned
    assert (run / "checkpoints" / (STEP4 + ".damaged") / name).is_file()  # moved aside for inspection
    if not retrain:
        assert summary["checkpoint"] == str(run / "checkpoints" / STEP2)
        assert summary["loss"] == json.loads((run / "checkpoints" / STEP2 / STATE_NAME).read_text())["loss"]
        return
    assert summary["checkpoint"] == str(run / "checkpoints" / STEP4)
    redone = load_file(str(run / "checkpoints" / STEP4 / WEIGHTS_NAME))
    original = load_file(str(trained / "checkpoints" / STEP4 / WEIGHTS_NAME))
    assert redone.keys() == original.keys()
    assert all(torch.equal(redone[k], original[k]) for k in original)


@pytest.mark.parametrize("name", FILES)
def test_damaged_checkpoint_without_an_intact_one_is_an_error_naming_the_file(name, trained, data_root, tmp_path):
    run = _copy(trained, tmp_path)
    shutil.rmtree(run / "checkpoints" / STEP2)
    bad = run / "checkpoints" / STEP4
    _truncate(bad / name)
    with pytest.raises(CheckpointError, match=name):  # auto-resume: nothing intact to fall back to
        _resume(data_root, run)
    assert bad.is_dir(), "a damaged checkpoint is never deleted or moved when there is nothing to resume from"
    with pytest.raises(CheckpointError, match=f"ckpt_path=.*{name}"):  # explicit: always an error
        _resume(data_root, tmp_path / "fresh", f"ckpt_path={bad}")


def test_rng_states_that_verify_but_cannot_be_restored_are_an_error(trained, data_root, tmp_path):
    """accelerate swallows a failure to restore the RNG states (INFO log, resume not exact): caught here."""
    run = _copy(trained, tmp_path)
    ckpt = run / "checkpoints" / STEP4
    torch.save({"step": 0}, ckpt / "random_states_0.pkl")  # readable, but holds no RNG state
    write_manifest(ckpt, 4)  # the manifest vouches for it: only the load-time check can notice
    with pytest.raises(CheckpointError, match="random_states_0.pkl"):
        _resume(data_root, tmp_path / "fresh", f"ckpt_path={ckpt}", "trainer.max_steps=5")


def test_half_rotated_directory_never_counts_as_complete(trained, tmp_path, monkeypatch):
    run = _copy(trained, tmp_path)
    ckpts = run / "checkpoints"
    # an interrupted rotation of step 2: the marker goes first, so what is left is plainly incomplete
    real_rmtree = shutil.rmtree
    seen = []

    def interrupted(path, *a, **k):
        seen.append((Path(path) / MANIFEST_NAME).exists())
        (Path(path) / "optimizer.bin").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod._remove_checkpoint(ckpts / STEP2)
    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", real_rmtree)
    assert seen == [False], "the manifest must be gone before any data file is deleted"
    assert list_checkpoints(ckpts) == [ckpts / STEP4]
    with pytest.raises(CheckpointError, match="incomplete checkpoint, no checkpoint_manifest.json"):
        verify_checkpoint(ckpts / STEP2)
    # the same state in the newest directory: auto-resume skips it and names why
    (ckpts / STEP4 / MANIFEST_NAME).unlink()
    (ckpts / STEP4 / "scheduler.bin").unlink()
    assert find_latest(ckpts) is None
    shutil.rmtree(ckpts / STEP2)
    shutil.copytree(trained / "checkpoints" / STEP2, ckpts / STEP2)
    chosen, skipped = select_resume_checkpoint(ckpts)
    assert chosen == ckpts / STEP2 and [p.name for p, _ in skipped] == [STEP4]
    assert "no checkpoint_manifest.json" in skipped[0][1]


def test_rotation_keeps_complete_checkpoints_only(trained, tmp_path):
    from types import SimpleNamespace

    run = _copy(trained, tmp_path)
    acc = SimpleNamespace(register_save_state_pre_hook=lambda f: None, register_load_state_pre_hook=lambda f: None)
    manager = ckpt_mod.CheckpointManager(acc, torch.nn.Linear(1, 1), run / "checkpoints", keep_last=1)
    manager._rotate()
    assert [p.name for p in (run / "checkpoints").iterdir()] == [STEP4]


# --- resume compatibility ------------------------------------------------------------------------------

@pytest.mark.parametrize("override,difference", [
    ("trainer.batch_size=2", "trainer.batch_size: checkpoint 1, now 2"),
    ("trainer.grad_accum=2", "trainer.grad_accum: checkpoint 1, now 2"),
    ("trainer.num_workers=1", "trainer.num_workers: checkpoint 0, now 1"),
    ("seed=7", "seed: checkpoint 42, now 7"),
    ("model=cami2v", 'model: checkpoint "cameractrl", now "cami2v"'),
    ("DATA_COPY", "data.root: checkpoint"),
])
def test_resume_with_a_changed_setting_is_an_error_listing_it(override, difference, trained, data_root, tmp_path):
    run = _copy(trained, tmp_path)
    if override == "DATA_COPY":
        copy = tmp_path / "data_copy"
        shutil.copytree(data_root, copy)
        override = f"data.root={copy}"
    with pytest.raises(ResumeMismatchError, match="resume_mismatch=warn") as err:
        _resume(data_root, run, override, "trainer.max_steps=5")
    assert difference in str(err.value)
    assert not (run / "checkpoints" / "step_00000005").exists()


@pytest.mark.parametrize("key,value,difference", [
    ("world_size", 2, "number of processes: checkpoint 2, now 1"),
    ("shards", "0123456789abcdef", 'data shard list: checkpoint "0123456789abcdef"'),
    ("camvid_version", "0.0.1", 'camvid version: checkpoint "0.0.1"'),
    ("backbone", "tiny_animatediff", 'backbone: checkpoint "tiny_animatediff", now "tiny_dynamicrafter"'),
])
def test_resume_with_changed_processes_shards_version_or_backbone_is_an_error(key, value, difference, trained, data_root,
                                                                     tmp_path):
    run = _copy(trained, tmp_path)
    ckpt = run / "checkpoints" / STEP4
    state = json.loads((ckpt / STATE_NAME).read_text())
    state["resume"][key] = value
    (ckpt / STATE_NAME).write_text(json.dumps(state))
    write_manifest(ckpt, 4)
    with pytest.raises(ResumeMismatchError) as err:
        _resume(data_root, run, "trainer.max_steps=5")
    assert difference in str(err.value)


def test_resume_mismatch_warn_resumes_with_a_warning(trained, data_root, tmp_path, caplog):
    run = _copy(trained, tmp_path)
    with caplog.at_level(logging.WARNING):
        summary = _resume(data_root, run, "trainer.batch_size=2", "resume_mismatch=warn", "trainer.max_steps=5")
    assert summary["step"] == 5 and summary["checkpoint"].endswith("step_00000005")
    assert any("trainer.batch_size: checkpoint 1, now 2" in r.getMessage() for r in caplog.records)
    state = json.loads((run / "checkpoints" / "step_00000005" / STATE_NAME).read_text())
    assert state["resume"]["batch_size"] == 2  # the new checkpoint records the new settings


def test_checkpoint_files_follow_the_umask(trained):
    import stat

    from camvid.fsutil import dir_mode, file_mode

    ckpt = trained / "checkpoints" / STEP4
    assert stat.S_IMODE(ckpt.stat().st_mode) == dir_mode()
    for f in ckpt.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == file_mode(), f.name


def test_sampling_refuses_a_damaged_checkpoint_naming_the_file(trained, tmp_path):
    from camvid.sampling import resolve_checkpoint

    run = _copy(trained, tmp_path)
    _truncate(run / "checkpoints" / STEP4 / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME):
        resolve_checkpoint(ckpt_path=run / "checkpoints" / STEP4)
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME):
        resolve_checkpoint(run_dir=run)
    assert resolve_checkpoint(ckpt_path=run / "checkpoints" / STEP2) == run / "checkpoints" / STEP2


@pytest.mark.slow
def test_two_processes_stop_together_on_one_ranks_bad_rng_states(data_root, tmp_path):
    """Rank 1's RNG file verifies but holds no state: both ranks stop with its name (no hang)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO / "src"))
    env.pop("CAMVID_RUN_ID", None)
    out = tmp_path / "ddp"

    def launch(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               str(REPO / "src" / "train.py"), *run_overrides(data_root, out, *BASE, *extra)]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    first = launch("trainer.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = out / "checkpoints" / STEP2
    assert (ckpt / "random_states_1.pkl").is_file()
    torch.save({"step": 0}, ckpt / "random_states_1.pkl")
    write_manifest(ckpt, 2)
    second = launch("trainer.max_steps=3")
    assert second.returncode != 0
    assert "random_states_1.pkl" in second.stderr, second.stderr[-3000:]
    assert not (out / "checkpoints" / "step_00000003").exists()
