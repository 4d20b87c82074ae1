"""The one training loop: every method, every backbone, every dataset.

The base model is frozen and only the method's new modules train (as both papers do); condition
dropout for classifier-free guidance lives in the loss (camvid.diffusion.losses). accelerate handles
devices, DDP / DeepSpeed and mixed precision.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from pathlib import Path

import torch
from accelerate.utils import gather_object
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from camvid.config import check_combination
from camvid.data.batches import to_device
from camvid.data.health import format_report, gather_report, report_metrics
from camvid.diffusion.losses import diffusion_loss
from camvid.fsutil import atomic_write_text
from camvid.models.registry import build_method, new_module_parameter_names, set_trainable
from camvid.threads import ThreadGovernor
from camvid.training.checkpoint import CheckpointManager, find_latest, read_trainer_state
from camvid.training.data import build_train_loader, prepare_data
from camvid.training.distributed import make_accelerator, shared_run_dir
from camvid.training.logger import build_logger, finish_runs_on_exit
from camvid.training.optim import build_optimizer, build_scheduler
from camvid.training.preemption import PreemptionGuard
from camvid.training.preview import log_preview
from camvid.training.resume import check_resume_compatible, run_fingerprint
from camvid.training.run_identity import run_id, run_name
from camvid.validation import validate_train_config

__all__ = ["TrainingObjective", "TrainState", "train"]


class TrainingObjective(nn.Module):
    """Wraps a method so the loss is computed inside ``forward`` (DDP syncs gradients through it)."""

    def __init__(self, method: nn.Module, cond_dropout: dict, timestep_range: tuple[int, int] | None = None):
        super().__init__()
        self.method = method
        self.cond_dropout = dict(cond_dropout)
        self.timestep_range = None if timestep_range is None else tuple(timestep_range)

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        return diffusion_loss(self.method, batch, generator=generator, cond_dropout=self.cond_dropout,
                              timestep_range=self.timestep_range)


class TrainState:
    """Per-process state checkpointed beside the optimizer: each rank's noise generator.

    accelerate writes custom state from the main process only, so every rank's generator state is
    gathered into the one file and each rank takes its own back on resume.
    """

    def __init__(self, accelerator, seed: int):
        self.accelerator = accelerator
        self.seed = seed
        self.generator = torch.Generator(device=accelerator.device)
        self.generator.manual_seed(seed + accelerator.process_index)

    def state_dict(self) -> dict:
        mine = self.generator.get_state()
        states = gather_object([mine]) if self.accelerator.num_processes > 1 else [mine]
        return {"generators": states}

    def load_state_dict(self, state: dict) -> None:
        states = state["generators"]
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        if len(states) != world:
            # A different number of processes cannot continue the old noise streams exactly.
            warnings.warn(f"checkpoint was written by {len(states)} processes, resuming with {world}: "
                          "noise generators are re-seeded", stacklevel=2)
            self.generator.manual_seed(self.seed + 7919 * (rank + 1))
            return
        self.generator.set_state(states[rank])


def _to_device(batch: dict, device: torch.device) -> dict:
    return to_device(batch, device)  # uint8 video from the loader is normalised on the device


def _batches(loader, overfit: int = 0):
    """Endless batches: a loader with an epoch length starts its next epoch when it runs out.
    ``overfit`` > 0 cycles over the first ``overfit`` batches (debug=overfit)."""
    if overfit:
        cached = []
        for batch in loader:
            cached.append(batch)
            if len(cached) == overfit:
                break
        while True:
            yield from cached
    epoch = 0
    while True:
        got_any = False
        for batch in loader:
            got_any = True
            yield batch
        if not got_any:
            raise RuntimeError("the training data loader yielded no batch; is the dataset empty?")
        epoch += 1
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)


def train(cfg: DictConfig) -> dict:
    """Train per ``cfg`` (the composed ``conf/train.yaml``); returns a summary dict.

    However training ends (an error, Ctrl-C, SIGTERM), an open W&B run is finished with the exit code.
    """
    with finish_runs_on_exit():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict:
    validate_train_config(cfg)  # types, ranges, paths: before anything is built
    check_combination(cfg)
    tcfg = cfg.trainer
    accelerator = make_accelerator(tcfg)
    run_dir = shared_run_dir(accelerator, Path(cfg.paths.output_dir))
    is_main = accelerator.is_main_process
    if is_main:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        print(resolved)
        atomic_write_text(run_dir / "config_resolved.yaml", resolved)

    # Same initial weights on every rank; data order and noise differ per rank.
    torch.manual_seed(int(cfg.seed))
    method = build_method(cfg)
    full = set_trainable(method, cfg)
    if full and is_main:
        if cfg.get("pretrained"):
            print("model.train_base=true: the pretrained base trains with the method's new modules "
                  "(model.train_base=false freezes it, as the papers do)")
        else:
            print("model.train_base: no pretrained base weights, so the whole model trains (not only the "
                  "method's new modules); give pretrained=PATH to train only the new modules")
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"model={cfg.model.name}: no trainable parameters after freeze_base()")
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in method.parameters())
    objective = TrainingObjective(method, OmegaConf.to_container(cfg.model.cond_dropout, resolve=True),
                                  cfg.model.get("train_timesteps"))  # optional [lo, hi]: docs/diffusion.md

    opt_cfg = cfg.model.optimizer
    new_names = new_module_parameter_names(method)
    optimizer = build_optimizer(params, opt_cfg, fused=bool(tcfg.get("fused_optimizer", True)),
                                new_params=[p for n, p in method.named_parameters() if n in new_names and p.requires_grad])
    scheduler = build_scheduler(optimizer, tcfg)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)

    state = TrainState(accelerator, int(cfg.seed) * 1000)
    accelerator.register_for_checkpointing(state)
    ckpt = CheckpointManager(accelerator, method, run_dir / "checkpoints", keep_last=tcfg.keep_last)

    prepare_data(cfg.data, accelerator)
    # what exact resume depends on: recorded in every checkpoint, compared when resuming
    fingerprint = run_fingerprint(cfg, accelerator.num_processes)
    resume_from = ckpt.resolve_resume(cfg.get("ckpt_path"))  # verified; auto-resume falls back past bad ones
    start_step, changed = 0, []
    if resume_from is not None:
        resumed_state = read_trainer_state(resume_from)
        changed = check_resume_compatible(resumed_state, fingerprint, str(cfg.get("resume_mismatch") or "error"),
                                          resume_from)
        start_step = int(resumed_state["step"])

    loader = build_train_loader(cfg, rank=accelerator.process_index, world_size=accelerator.num_processes,
                                skip_batches=start_step * int(tcfg.grad_accum))
    batches = _batches(loader, overfit=int(cfg.data.get("overfit_batches") or 0))
    # Start the data iterator before the RNG states are restored: creating it draws from the global
    # RNG, which the model's dropout also uses, and resume must continue exactly where it stopped.
    batches = itertools.chain([next(batches)], batches)
    if resume_from is not None:
        ckpt.load(resume_from, exact=not changed)
        if is_main:
            print(f"resumed from {resume_from} at step {start_step}")

    logger = build_logger(cfg.get("logger"), run_dir, OmegaConf.to_container(cfg, resolve=True), is_main,
                          run_name=run_name(cfg, run_dir), run_id=run_id(run_dir) if is_main else None)
    if is_main:
        print(f"run dir: {run_dir}\ntrainable parameters: {n_train:,} of {n_total:,}")
    max_steps = int(tcfg.max_steps)
    pbar = tqdm(total=max_steps, initial=start_step, disable=not is_main, desc="train", dynamic_ncols=True)
    # a resumed run that is already at max_steps reports the checkpoint's loss, not nan
    last = {"loss": float(resumed_state.get("loss", math.nan)) if resume_from is not None else math.nan}
    data_report = None  # skipped samples, summed over workers and ranks at every log step
    t0, samples_seen = time.perf_counter(), 0
    # optional data audit: which samples each rank trained on (DDP sharding check, debugging)
    seen_keys: list[list[str]] | None = [] if tcfg.get("log_sample_keys") else None
    preemption = PreemptionGuard().install()  # SLURM's pre-timeout signal: checkpoint, then requeue
    # CPU runs: intra-op threads follow the machine's load (camvid.threads.ThreadGovernor)
    governor = ThreadGovernor() if accelerator.device.type == "cpu" else None
    for step in range(start_step, max_steps):
        if governor is not None:
            governor.step(step)
        for _ in range(int(tcfg.grad_accum)):
            batch = _to_device(next(batches), accelerator.device)
            with accelerator.accumulate(objective):
                out = objective(batch, generator=state.generator)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"step {step}: loss is {loss.item()} (batch keys {batch.get('key')})")
                accelerator.backward(loss)
                grad_norm = accelerator.clip_grad_norm_(params, tcfg.max_grad_norm) if accelerator.sync_gradients else None
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            samples_seen += batch["video"].shape[0] * accelerator.num_processes
            if seen_keys is not None:
                seen_keys.append(list(batch["key"]))
        done = step + 1
        last = {"loss": accelerator.reduce(loss.detach(), reduction="mean").item(),
                "lr": scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            last["grad_norm"] = float(grad_norm)
        if done % int(tcfg.log_every) == 0 or done == max_steps:
            elapsed = time.perf_counter() - t0
            last["samples_per_s"] = samples_seen / max(elapsed, 1e-9)
            logger.log({f"train/{k}": v for k, v in last.items()}, step=done)
            data_report = gather_report(loader, accelerator)
            logger.log(report_metrics(data_report), step=done)
        pbar.update(1)
        pbar.set_postfix(loss=f"{last['loss']:.4f}",
                         skipped=sum(data_report["skipped"].values()) if data_report else 0)
        saved = done % int(tcfg.ckpt_every) == 0 or done == max_steps
        if saved:
            ckpt.save(done, {"loss": last["loss"], "model": cfg.model.name, "attn": cfg.attn.name,
                             "resume": fingerprint})
        if preemption.requested(accelerator):
            if not saved:
                ckpt.save(done, {"loss": last["loss"], "model": cfg.model.name, "attn": cfg.attn.name,
                                 "resume": fingerprint})
            if is_main:
                print(f"preempted: checkpoint at step {done} saved, handing over to the requeue", flush=True)
            accelerator.wait_for_everyone()
            preemption.requeue(is_main)
        if tcfg.sample_every and done % int(tcfg.sample_every) == 0 and is_main:
            log_preview(method, batch, cfg, run_dir, done, logger)
    pbar.close()
    preemption.uninstall()
    if governor is not None and governor.changes and is_main:
        print("CPU threads followed the load (step: threads, other jobs' load): "
              + ", ".join(f"{s}: {n} ({o})" for s, n, o in governor.changes))
    if seen_keys is not None:
        keys_dir = run_dir / "sample_keys"
        keys_dir.mkdir(exist_ok=True)
        atomic_write_text(keys_dir / f"rank_{accelerator.process_index}.json", json.dumps(seen_keys))
    data_report = gather_report(loader, accelerator)
    if is_main:
        print(f"data: {format_report(data_report)}")
    accelerator.wait_for_everyone()
    logger.finish()
    accelerator.end_training()
    latest = find_latest(run_dir / "checkpoints")
    summary = {"run_dir": str(run_dir), "step": max_steps, "loss": last["loss"],
               "checkpoint": str(latest) if latest else None, "trainable_parameters": n_train,
               "data_skipped": data_report}
    if is_main:  # one summary line per run, not one per process
        print(f"done: {summary}", flush=True)
    return summary
