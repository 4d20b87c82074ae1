"""The one training loop: every method trains, resume is exact, DDP ranks see disjoint data, sweeps run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from camvid.training.checkpoint import WEIGHTS_NAME, find_latest
from camvid.training.loop import train
from conftest import REPO, TINY, compose, data_overrides, run_overrides


@pytest.mark.parametrize("model,family", [("dynamicrafter", "dynamicrafter"), ("motionctrl", "dynamicrafter"),
                                          ("cameractrl", "dynamicrafter"), ("cami2v", "dynamicrafter"),
                                          ("cameractrl", "animatediff"), ("cvd", "animatediff")])
def test_two_training_steps(model, family, data_root, tmp_path):
    cfg = compose(run_overrides(data_root, tmp_path, f"model={model}", f"backbone=tiny_{family}",
                             *data_overrides(model, data_root)))
    from camvid.models.registry import build_method, set_trainable

    torch.manual_seed(int(cfg.seed))
    initial = build_method(cfg)
    assert set_trainable(initial, cfg), "a tiny base without pretrained weights trains too"
    summary = train(cfg)
    assert summary["step"] == 2 and torch.isfinite(torch.tensor(summary["loss"]))
    ckpt = find_latest(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000002"
    trained = load_file(str(ckpt / WEIGHTS_NAME))
    expected = {n for n, p in initial.named_parameters() if p.requires_grad}
    assert set(trained) == expected
    before = initial.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in trained), "two optimizer steps changed nothing"
    assert (tmp_path / "config_resolved.yaml").is_file()


def _trainable_after(cfg_overrides: list[str]) -> dict[str, torch.Tensor]:
    cfg = compose(cfg_overrides)
    train(cfg)
    return load_file(str(find_latest(Path(cfg.paths.output_dir) / "checkpoints") / WEIGHTS_NAME))


def test_resume_is_exact(data_root, tmp_path):
    base = ["model=cami2v", "backbone=tiny_dynamicrafter", "data=synthetic", "trainer.ckpt_every=2",
            "trainer.keep_last=5"]
    straight = _trainable_after(run_overrides(data_root, tmp_path / "a", *base, "trainer.max_steps=4"))
    _trainable_after(run_overrides(data_root, tmp_path / "b", *base, "trainer.max_steps=2"))
    # same run directory: resumes automatically from its latest checkpoint
    resumed = _trainable_after(run_overrides(data_root, tmp_path / "b", *base, "trainer.max_steps=4"))
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    # and explicitly through ckpt_path into a fresh directory
    explicit = _trainable_after(run_overrides(data_root, tmp_path / "c", *base, "trainer.max_steps=4",
                                           f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'step_00000002'}"))
    for k in straight:
        assert torch.equal(straight[k], explicit[k]), k


def test_checkpoint_rotation_keeps_last_k(data_root, tmp_path):
    cfg = compose(run_overrides(data_root, tmp_path, "model=cameractrl", "backbone=tiny_dynamicrafter",
                             "trainer.max_steps=5", "trainer.ckpt_every=1", "trainer.keep_last=2"))
    train(cfg)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000004", "step_00000005"]


def _env() -> dict:
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO / "src"))
    env.pop("CAMVID_RUN_ID", None)
    return env


def _free_port() -> int:
    """A port no other process listens on now (a fixed one collides when two suites run at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_see_disjoint_samples(data_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(REPO / "src" / "train.py"), *run_overrides(data_root, out, "model=cami2v",
                                                       "backbone=tiny_dynamicrafter", "trainer.max_steps=3",
                                                       "trainer.log_sample_keys=true")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done: ") == 1, "one summary line for the run, from rank 0 only"
    seen = [json.loads((out / "sample_keys" / f"rank_{r}.json").read_text()) for r in range(2)]
    assert all(len(s) == 3 for s in seen)
    keys = [{k for batch in s for k in batch} for s in seen]
    assert keys[0] and keys[1] and not (keys[0] & keys[1]), keys
    assert find_latest(out / "checkpoints").name == "step_00000003"


def test_multirun_through_submitit_local(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "src" / "train.py"), "-m", "hydra/launcher=submitit_local",
           "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}", "model=cameractrl",
           "backbone=tiny_dynamicrafter", *[o for o in run_overrides(data_root, tmp_path, "seed=1,2")
                                            if not o.startswith("paths.output_dir")]]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job in ("0", "1"):
        assert find_latest(sweep / job / "checkpoints") is not None, sorted(p.name for p in sweep.rglob("*"))[:50]


def test_missing_data_root_is_named_before_training(tmp_path):
    missing = tmp_path / "no_such_dir"
    cfg = compose([*TINY, "debug=fast", "model=cameractrl", "backbone=tiny_dynamicrafter", "data=re10k",
                   f"data.root={missing}", f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(FileNotFoundError, match=str(missing)):
        train(cfg)


def test_unknown_config_option_is_named(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "src" / "train.py"), "model=nope", "--cfg", "job"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "model/nope" in proc.stderr and "cami2v" in proc.stderr


def test_invalid_combination_fails_at_start_up(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "src" / "train.py"), "model=cami2v", "attn=cross_video",
                           "backbone=tiny_dynamicrafter", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "attn=cross_video" in proc.stderr and "model=cami2v" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_wandb_offline_logs_metrics_and_preview_videos(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in run_overrides(data_root, tmp_path, "model=cami2v", "backbone=tiny_dynamicrafter")
                 if o != "logger=none"]
    cfg = compose([*overrides, "logger=wandb", "trainer.sample_every=2", "trainer.sample_num=1",
                   "trainer.sample_steps=2"])
    assert cfg.logger.name == "wandb"
    train(cfg)
    previews = sorted((tmp_path / "previews").glob("*.gif"))
    assert [p.name for p in previews] == ["step00000002_0.gif"]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_deepspeed_trainer_config_states_the_micro_batch():
    from camvid.training.distributed import deepspeed_plugin

    cfg = compose(["trainer=deepspeed_zero1", "trainer.batch_size=4", "trainer.grad_accum=2"])
    ds = deepspeed_plugin(cfg.trainer).deepspeed_config
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 1 and ds["gradient_clipping"] == cfg.trainer.max_grad_norm
