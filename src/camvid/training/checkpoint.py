"""Checkpoints of a training run: atomic, rotating, resumable.

A checkpoint is a directory ``<run_dir>/checkpoints/step_<N>`` written by ``accelerator.save_state``
(optimizer, LR scheduler, grad scaler, every process's RNG states, registered custom objects), except
that the model part holds only the *trainable* parameters: the frozen base model comes from its own
pretrained file, and a CamI2V checkpoint is 1 GB instead of 11 GB. It is first written under a
temporary name and renamed when every process has finished, so a crash never leaves a half
checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CheckpointManager", "trainable_state_dict", "load_trainable_state_dict", "find_latest", "read_step"]

_STEP_DIR = re.compile(r"^step_(\d+)$")
WEIGHTS_NAME = "trainable.safetensors"
STATE_NAME = "trainer_state.json"


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k in names}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load trainable weights strictly: every trainable parameter must be present, nothing extra."""
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: checkpoint does not match the model's trainable parameters "
            f"(missing {len(missing)}: {missing[:5]}, unexpected {len(unexpected)}: {unexpected[:5]}); "
            "was it written by a run with a different model/attn config?"
        )
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys


def find_latest(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir`` (temporary directories are ignored)."""
    if not ckpt_dir.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    complete = [(s, p) for s, p in steps if (p / STATE_NAME).is_file()]
    return max(complete)[1] if complete else None


def read_step(path: Path) -> int:
    """The optimizer step a checkpoint directory was written at."""
    state = Path(path) / STATE_NAME
    if not state.is_file():
        raise FileNotFoundError(
            f"not a camvid checkpoint (no {STATE_NAME}): {path}; pass a step_<N> directory from <run_dir>/checkpoints"
        )
    return int(json.loads(state.read_text())["step"])


class CheckpointManager:
    """Save/resume through an accelerate ``Accelerator``.

    ``module`` is the plain (unwrapped) module whose trainable parameters are saved, so the weight
    file's keys are the method's own names whatever wrapper (DDP, DeepSpeed) trains it.
    """

    def __init__(self, accelerator, module: nn.Module, ckpt_dir: Path, keep_last: int = 3):
        self.accelerator = accelerator
        self.module = module
        self.dir = Path(ckpt_dir)
        self.keep_last = max(1, int(keep_last))
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

    # accelerate hooks: replace the full model weights with the trainable subset
    def _save_hook(self, models, weights, output_dir):
        if self.accelerator.is_main_process:
            save_file(trainable_state_dict(self.module), str(Path(output_dir) / WEIGHTS_NAME))
        weights.clear()  # ``models`` is the accelerator's own list: leave it alone

    def _load_hook(self, models, input_dir):
        path = Path(input_dir) / WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint weights not found: {path}")
        load_trainable_state_dict(self.module, load_file(str(path)), str(path))
        models.clear()  # a local list here: stops accelerate from loading full model weights

    def save(self, step: int, trainer_state: dict) -> Path:
        acc = self.accelerator
        final = self.dir / f"step_{step:08d}"
        tmp = self.dir / f".tmp_step_{step:08d}"
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / STATE_NAME).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._rotate()
        acc.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        steps = sorted(
            (int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_DIR.match(p.name))
        )
        for _, p in steps[: -self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)

    def load(self, path: Path) -> dict:
        path = Path(path)
        read_step(path)  # a clear error for a directory that is not a checkpoint
        self.accelerator.load_state(str(path))
        return json.loads((path / STATE_NAME).read_text())
