"""The optimizer and the learning-rate schedule of the training loop.

AdamW as both papers train, with PyTorch's fused kernel wherever it runs (every trainable tensor a
floating-point tensor on the CPU or a CUDA device): one kernel per step instead of a Python loop over
the parameters, which on the CPU costs about a tenth of a tiny model's training step
(docs/performance.md, "CPU threads"). Same update rule, same state dict: a run resumes across the two.

The schedule: an optional linear warm-up, then ``constant`` (the papers' recipe) or ``cosine`` (down to
``lr_min_ratio`` x lr at ``max_steps``). For the tiny CPU recipe the cosine decay measured no gain over
the constant step (docs/diffusion.md, "Camera guidance, and the demo at 1000 steps").
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "cosine")


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW takes these parameters."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(params: list[torch.Tensor], opt_cfg, fused: bool = True,
                    new_params: list[torch.Tensor] | None = None) -> torch.optim.Optimizer:
    """AdamW over ``params`` with ``opt_cfg.lr``, ``betas`` and ``weight_decay``; fused when asked and
    supported (see ``fused_supported``).

    ``new_params`` (a subset of ``params``: the method's new modules) get ``opt_cfg.new_modules_lr_scale``
    x lr in a second parameter group when that scale is not 1 (a base that trains alongside its new,
    zero-initialised camera modules: docs/diffusion.md, "The tiny CPU recipe").
    """
    lr = float(opt_cfg.lr)
    scale = float(opt_cfg.get("new_modules_lr_scale", 1.0) or 1.0)
    groups: list | list[dict] = params
    if new_params and scale != 1.0:
        new_ids = {id(p) for p in new_params}
        unknown = new_ids - {id(p) for p in params}
        if unknown:
            raise ValueError(f"{len(unknown)} of the new modules' parameters are not trainable")
        groups = [{"params": [p for p in params if id(p) not in new_ids], "lr": lr},
                  {"params": [p for p in params if id(p) in new_ids], "lr": lr * scale}]
        groups = [g for g in groups if g["params"]]
    kwargs = {"fused": True} if fused and fused_supported(params) else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt_cfg.betas), weight_decay=float(opt_cfg.weight_decay),
                             **kwargs)


def lr_factor(step: int, *, warmup: int = 0, schedule: str = "constant", max_steps: int = 1,
              min_ratio: float = 0.0) -> float:
    """The multiplier of the base learning rate for optimizer step ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, max_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of ``tcfg`` (``lr_warmup_steps``, ``lr_schedule``, ``lr_min_ratio``, ``max_steps``), counted
    in optimizer steps."""
    kw = dict(warmup=int(tcfg.get("lr_warmup_steps") or 0), schedule=str(tcfg.get("lr_schedule") or "constant"),
              max_steps=int(tcfg.max_steps), min_ratio=float(tcfg.get("lr_min_ratio") or 0.0))
    lr_factor(0, **kw)  # an unknown schedule fails here, before the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, **kw))
