"""Process-group plumbing: the Accelerator from the trainer config, and one run directory for all ranks."""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list

__all__ = ["make_accelerator", "deepspeed_plugin", "shared_run_dir"]


def make_accelerator(tcfg) -> Accelerator:
    """``tcfg`` is the ``trainer`` config group."""
    kwargs = {}
    if tcfg.get("distributed") == "deepspeed_zero1":
        kwargs["deepspeed_plugin"] = deepspeed_plugin(tcfg)
    elif tcfg.get("distributed") not in (None, "ddp"):
        raise ValueError(f"trainer.distributed={tcfg.distributed}: choose null, ddp or deepspeed_zero1")
    precision = str(tcfg.precision)
    if precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"trainer.precision={precision}: choose no, fp16 or bf16")
    return Accelerator(
        cpu=bool(tcfg.cpu),
        mixed_precision=precision,
        gradient_accumulation_steps=int(tcfg.grad_accum),
        kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=bool(tcfg.get("find_unused_parameters", False)))],
        **kwargs,
    )


def deepspeed_plugin(tcfg):
    """DeepSpeed ZeRO settings from the trainer config (trainer=deepspeed_zero1)."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(
        zero_stage=int(tcfg.get("zero_stage", 1)),
        gradient_accumulation_steps=int(tcfg.grad_accum),
        gradient_clipping=float(tcfg.max_grad_norm),
    )
    # Our loader is not passed through accelerator.prepare (it splits data per rank itself), so
    # DeepSpeed cannot infer the micro-batch size from it: state it.
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = int(tcfg.batch_size)
    return plugin


def shared_run_dir(accelerator: Accelerator, proposed: Path) -> Path:
    """Rank 0's run directory, broadcast to every rank.

    Each rank composes its own Hydra config, so a timestamped directory can differ between ranks by
    a second; checkpoints and logs must land in one place. A rank whose own directory differs and
    holds nothing but Hydra's bookkeeping removes it.
    """
    chosen = [str(proposed)]
    if accelerator.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    run_dir = Path(chosen[0])
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if run_dir.resolve() != proposed.resolve() and proposed.is_dir():
        leftovers = {p.name for p in proposed.iterdir()}
        if leftovers <= {".hydra", "train.log"}:
            shutil.rmtree(proposed, ignore_errors=True)
    return run_dir
