"""Clean endings: one "done:" line, W&B runs finished on success, error or SIGTERM, non-zero exit on failure;
and bad option values stopped at start-up, naming the option, the value and what is allowed."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from camvid.training import loop
from camvid.training.loop import train
from camvid.validation import (
    ConfigPathError,
    ConfigValidationError,
    validate_eval_config,
    validate_sample_config,
    validate_train_config,
)
from conftest import REPO, compose, run_overrides

BASE = ["model=cameractrl", "backbone=tiny_dynamicrafter"]


def _wandb_records(run_dir: Path):
    """The records of an offline W&B run file (LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""  # 7-byte ":W&B" header
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        buf += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _exit_code_of_the_run(out: Path) -> int | None:
    import wandb

    wandb.teardown()  # run.finish() returns before W&B's service process has written the last records
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    codes = [r.exit.exit_code for r in _wandb_records(run_dir) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def _wandb_overrides(data_root, out, *extra):
    return [o for o in run_overrides(data_root, out, *BASE, *extra) if o != "logger=none"] + ["logger=wandb"]


def _fail_on_first_step(monkeypatch, action):
    def failing_loss(*args, **kwargs):
        action()

    monkeypatch.setattr(loop, "diffusion_loss", failing_loss)


def test_a_run_that_raises_leaves_a_finished_wandb_run(data_root, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")

    def boom():
        raise RuntimeError("boom in the loss")

    _fail_on_first_step(monkeypatch, boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(compose(_wandb_overrides(data_root, tmp_path)))
    assert wandb.run is None
    assert _exit_code_of_the_run(tmp_path) == 1


def test_sigterm_finishes_the_wandb_run_with_exit_code_143(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _fail_on_first_step(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit) as ended:
        train(compose(_wandb_overrides(data_root, tmp_path)))
    assert ended.value.code == 128 + signal.SIGTERM
    assert _exit_code_of_the_run(tmp_path) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed afterwards


def test_a_successful_run_prints_one_summary_and_finishes_wandb(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(compose(_wandb_overrides(data_root, tmp_path)))
    assert capsys.readouterr().out.count("done: ") == 1
    assert _exit_code_of_the_run(tmp_path) == 0


# --- start-up validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("trainer.max_steps=abc", "trainer.max_steps=abc: must be an integer >= 1"),
    ("trainer.max_steps=-5", "trainer.max_steps=-5: must be an integer >= 1"),
    ("trainer.max_steps=2.5", "trainer.max_steps=2.5: must be an integer >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0: must be an integer >= 1"),
    ("trainer.num_workers=-1", "trainer.num_workers=-1: must be an integer >= 0"),
    ("trainer.grad_accum=two", "trainer.grad_accum=two: must be an integer >= 1"),
    ("trainer.max_grad_norm=0", "trainer.max_grad_norm=0: must be a number > 0.0"),
    ("trainer.precision=fp8", "trainer.precision=fp8: must be one of no, fp16, bf16"),
    ("trainer.cpu=maybe", "trainer.cpu=maybe: must be true or false"),
    ("trainer.cap_workers=maybe", "trainer.cap_workers=maybe: must be true or false"),
    ("model.optimizer.lr=fast", "model.optimizer.lr=fast: must be a number > 0.0"),
    ("model.optimizer.lr=0", "model.optimizer.lr=0: must be a number > 0.0"),
    ("model.optimizer.betas=[0.9]", "model.optimizer.betas=[0.9]: must be a list of 2 numbers"),
    ("backbone.cond_dropout.uncond_prob=1.5", "model.cond_dropout.uncond_prob=1.5: must be a number >= 0.0 and <= 1.0"),
    ("backbone.cond_dropout.p_camera=-0.1", "model.cond_dropout.p_camera=-0.1: must be a number >= 0.0 and <= 1.0"),
    ("model.train_timesteps=[900,100]",
     "model.train_timesteps=[900,100]: must be a list of 2 integers >= 0 and <= 999, the first <= the second"),
    ("data.stride_train=[4,1]", "data.stride_train=[4,1]: must be a list of 2 integers >= 1, the first <= the second"),
    ("seed=-1", "seed=-1: must be an integer >= 0"),
    ("resume_mismatch=ignore", "resume_mismatch=ignore: must be one of error, warn"),
    ("data.handoff_group=0", "data.handoff_group=0: must be auto or an integer >= 1"),
    ("backbone.height=abc", "backbone.height=abc: must be an integer >= 8"),
])
def test_bad_option_values_name_the_option_value_and_what_is_allowed(override, message, data_root, tmp_path):
    out = tmp_path / "run"
    cfg = compose(run_overrides(data_root, out, *BASE, override))
    with pytest.raises(ConfigValidationError) as err:
        train(cfg)
    assert message in str(err.value)
    assert not out.exists(), "nothing may be built or written before the config is valid"


def test_every_problem_is_reported_at_once(data_root, tmp_path):
    cfg = compose(run_overrides(data_root, tmp_path, *BASE, "trainer.max_steps=abc", "model.optimizer.lr=fast"))
    with pytest.raises(ConfigValidationError) as err:
        validate_train_config(cfg)
    assert len(err.value.problems) == 2


def test_missing_paths_are_named(data_root, tmp_path):
    cfg = compose(run_overrides(data_root, tmp_path, *BASE, f"ckpt_path={tmp_path / 'nope'}",
                                f"pretrained={tmp_path / 'weights.ckpt'}"))
    with pytest.raises(ConfigPathError, match="ckpt_path=.*nope: must be an existing directory") as err:
        validate_train_config(cfg)
    assert isinstance(err.value, FileNotFoundError) and "backbone=tiny_<family>" in str(err.value)


def test_the_shipped_configs_are_valid(data_root, tmp_path):
    validate_train_config(compose(run_overrides(data_root, tmp_path, *BASE)))
    validate_eval_config(compose([f"samples_dir={tmp_path}"], "eval"))
    validate_sample_config(compose([f"run_dir={tmp_path}"], "sample"))
    validate_sample_config(compose(["model=cami2v", "backbone=tiny_dynamicrafter"], "sample"))  # released-weights mode


@pytest.mark.parametrize("config,overrides,message", [
    ("eval", ["samples_dir=DIR", "camera.trials=0"], "camera.trials=0: must be an integer >= 1"),
    ("eval", ["samples_dir=DIR", "metrics=[camera,lpips]"], "metrics=[camera,lpips]: must be a list drawn from"),
    ("eval", [], "samples_dir: must be set"),
    ("eval", ["samples_dir=DIR/missing"], "samples_dir=.*missing: must be an existing directory"),
    ("sample", ["run_dir=DIR", "fov_deg=200"], "fov_deg=200: must be a number > 0.0 and < 180.0"),
    ("sample", ["run_dir=DIR", "num_samples=many"], "num_samples=many: must be an integer >= 1"),
    ("sample", ["run_dir=DIR", "trajectory_scale=-1"], "trajectory_scale=-1: must be a number > 0.0"),
    ("sample", [], "ckpt_path=null and run_dir=null"),
    ("sample", ["model=cami2v", "pretrained=DIR/none.ckpt"], "pretrained=.*none.ckpt: must be an existing file"),
    ("sample", ["model=cami2v", "backbone=tiny_dynamicrafter", "method_ckpt=DIR/m.pt"],
     "method_ckpt=.*m.pt: must be an existing file"),
    ("train", ["method_ckpt=DIR/m.pt"], "method_ckpt=.*m.pt: must be an existing file"),
    ("train", ["released_masks=sometimes"], "released_masks=sometimes: must be one of auto"),
])
def test_sample_eval_and_weight_options_are_validated(config, overrides, message, tmp_path):
    validate = {"eval": validate_eval_config, "sample": validate_sample_config, "train": validate_train_config}[config]
    if config == "train":
        overrides = ["backbone=tiny_dynamicrafter", *overrides]
    cfg = compose([o.replace("DIR", str(tmp_path)) for o in overrides], config)
    with pytest.raises(ConfigValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(cfg)


def test_entry_point_exits_non_zero_before_building_anything(data_root, tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO / "src"))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "src" / "train.py"),
                           *run_overrides(data_root, out, *BASE, "trainer.max_steps=abc")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "trainer.max_steps=abc: must be an integer >= 1" in proc.stderr, proc.stderr[-2000:]
    assert "done:" not in proc.stdout and not (out / "checkpoints").exists()
