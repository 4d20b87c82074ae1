"""Backbone cost tables: parameter counts of every model x backbone, and CamI2V Table 3 style memory
and time (inference; training forward / backward / optimizer step).

    python benchmarks/backbone.py params
        every method x backbone, built on the meta device (no memory): total, trainable (the papers'
        setting: a pretrained base frozen, only the method's modules train) and UNet parameters.

    python benchmarks/backbone.py speed --backbone dynamicrafter_256 --models dynamicrafter,cami2v
        [--height 256 --width 256 --frames 16 --batch 1 --steps 25 --grad-checkpointing
         --precision bf16 --zero1 --device cuda --repeat 3]

Each (model, phase) runs in a fresh child process, so one case's allocator state cannot help or
hurt another. Peak memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) of the
measured call; on the CPU the child's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` before the call) minus its resident size just before it. Times are the
best of ``--repeat`` runs after one warm-up. The ratio columns compare each model with the first one
of ``--models``, measured in the same run (machine load affects both alike).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAIRS = {  # backbone config -> models (conf/model) that run on it
    "dynamicrafter_256": ["dynamicrafter", "motionctrl", "cameractrl", "cami2v"],
    "dynamicrafter_512": ["dynamicrafter", "motionctrl", "cameractrl", "cami2v"],
    "animatediff": ["animatediff", "cameractrl", "cvd"],
    "tiny_dynamicrafter": ["dynamicrafter", "motionctrl", "cameractrl", "cami2v"],
    "tiny_animatediff": ["animatediff", "cameractrl", "cvd"],
}


def compose(model: str, backbone: str, extra: list[str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    data = "data=cvd_mix" if model == "cvd" else "data=synthetic"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[f"model={model}", f"backbone={backbone}", data,
                                                             "logger=none", *(extra or [])])


def build(cfg, device=None, gradient_checkpointing: bool = False):
    """The method of ``cfg`` with random weights on ``device`` (no pretrained files)."""
    from camvid.config import check_combination
    from camvid.models.registry import _attn_kwargs, _plain

    check_combination(cfg)
    kwargs = dict(method=cfg.model.name, size=str(cfg.backbone.size), attn=cfg.attn.variant,
                  attn_kwargs=_attn_kwargs(cfg.attn), num_frames=int(cfg.backbone.num_frames),
                  image_hw=(int(cfg.backbone.height), int(cfg.backbone.width)), device=device,
                  **_plain(cfg.backbone.get("kwargs")))
    if cfg.backbone.family == "dynamicrafter":
        from camvid.models.dynamicrafter import build_dynamicrafter_method

        return build_dynamicrafter_method(**kwargs, gradient_checkpointing=gradient_checkpointing)
    from camvid.models.animatediff import build_animatediff_method

    model = build_animatediff_method(**kwargs)
    if gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    return model


def count(params) -> int:
    return sum(p.numel() for p in params)


def params_table() -> list[dict]:
    rows = []
    for backbone, models in PAIRS.items():
        for model in models:
            cfg = compose(model, backbone)
            method = build(cfg, device="meta")
            method.freeze_base()  # the papers' setting: the pretrained base stays frozen
            unet = method.unet if hasattr(method, "unet") else None
            rows.append({"model": model, "backbone": backbone, "total": count(method.parameters()),
                         "trainable": count(p for p in method.parameters() if p.requires_grad),
                         "unet": count(unet.parameters()) if unet is not None else 0})
    return rows


# ------------------------------------------------------------------------------------------- speed


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_kib("VmRSS") * 1024


def _peak(device: torch.device, base: int) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _rss_kib("VmHWM") * 1024 - base


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def batch_for(cfg, batch_size: int, device) -> dict:
    """A random batch of the model's data shape (cameras moving along x)."""
    T, H, W = int(cfg.backbone.num_frames), int(cfg.backbone.height), int(cfg.backbone.width)
    views = int(cfg.model.views)
    B = batch_size * views
    K = torch.tensor([[0.8 * W, 0, W / 2], [0, 0.8 * W, H / 2], [0, 0, 1]]).expand(B, T, 3, 3).clone()
    c2w = torch.eye(4).expand(B, T, 4, 4).clone()
    c2w[..., 0, 3] = torch.linspace(0, 0.5, T)
    batch = {"video": torch.rand(B, T, 3, H, W) * 2 - 1, "K": K, "c2w": c2w, "caption": ["a room"] * B,
             "cond_index": torch.zeros(B, dtype=torch.long), "frame_stride": torch.full((B,), 8),
             "fps": torch.full((B,), 8), "num_views": views}
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def run_case(args) -> dict:
    """One (model, phase) measurement, in this (child) process."""
    device = torch.device(args.device)
    cfg = compose(args.model, args.backbone, [f"backbone.height={args.height}", f"backbone.width={args.width}",
                                              f"backbone.num_frames={args.frames}"])
    method = build(cfg, device=device, gradient_checkpointing=args.grad_checkpointing)
    method.freeze_base()
    batch = batch_for(cfg, args.batch, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else (lambda: torch.autocast(
        device.type, enabled=False))
    out = {"model": args.model, "phase": args.phase}
    if args.phase == "inference":
        from camvid.diffusion.sampler import sample_video

        method.eval()
        guidance = dict(cfg.model.guidance)

        def call():
            with torch.no_grad(), autocast():
                sample_video(method, batch, num_steps=args.steps, guidance=guidance,
                             generator=torch.Generator(device=device).manual_seed(0))

        call()
        base = _reset_peak(device)
        times = []
        for _ in range(args.repeat):
            _sync(device)
            t0 = time.perf_counter()
            call()
            _sync(device)
            times.append(time.perf_counter() - t0)
        out.update(peak=_peak(device, base), time=min(times), per_step=min(times) / args.steps)
        return out

    from camvid.diffusion.losses import diffusion_loss

    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    if args.zero1:
        import torch.distributed as dist
        from torch.distributed.optim import ZeroRedundancyOptimizer

        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29531")
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)))
        optim = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=1e-5)
    else:
        optim = torch.optim.AdamW(params, lr=1e-5)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(timed: bool):
        marks = []
        _sync(device)
        marks.append(time.perf_counter())
        with autocast():
            loss = diffusion_loss(method, batch, generator=gen, cond_dropout=dict(cfg.model.cond_dropout))["loss"]
        _sync(device)
        marks.append(time.perf_counter())
        loss.backward()
        _sync(device)
        marks.append(time.perf_counter())
        optim.step()
        optim.zero_grad(set_to_none=True)
        _sync(device)
        marks.append(time.perf_counter())
        return [b - a for a, b in zip(marks, marks[1:])]

    step(False)  # warm-up: optimizer state allocated here
    base = _reset_peak(device)
    runs = [step(True) for _ in range(args.repeat)]
    out.update(peak=_peak(device, base), forward=min(r[0] for r in runs), backward=min(r[1] for r in runs),
               optimizer=min(r[2] for r in runs), trainable=count(params))
    return out


def speed_table(args) -> list[dict]:
    rows = []
    for model in args.models.split(","):
        for phase in ("inference", "training"):
            cmd = [sys.executable, __file__, "_case", "--model", model, "--phase", phase,
                   *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                     if k not in ("command", "models", "model", "phase", "grad_checkpointing", "zero1")],
                   *(["--grad-checkpointing"] if args.grad_checkpointing else []), *(["--zero1"] if args.zero1 else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
            if proc.returncode:
                raise RuntimeError(f"{model} {phase} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def print_speed(rows: list[dict], args) -> None:
    print(f"backbone={args.backbone} {args.height}x{args.width}, {args.frames} frames, batch {args.batch}, "
          f"{args.device}, {args.precision}, grad checkpointing {args.grad_checkpointing}, zero1 {args.zero1}, "
          f"inference = {args.steps} DDIM steps with the model's guidance")
    inf = {r["model"]: r for r in rows if r["phase"] == "inference"}
    tr = {r["model"]: r for r in rows if r["phase"] == "training"}
    ref = next(iter(tr))
    print("| model | inference peak GiB | s / step | training peak GiB | forward s | backward s | optimizer s | "
          f"train step vs {ref} |")
    print("|---|---|---|---|---|---|---|---|")
    ref_total = sum(tr[ref][k] for k in ("forward", "backward", "optimizer"))
    for model in tr:
        total = sum(tr[model][k] for k in ("forward", "backward", "optimizer"))
        print(f"| {model} | {_gib(inf[model]['peak'])} | {inf[model]['per_step']:.3f} | {_gib(tr[model]['peak'])} | "
              f"{tr[model]['forward']:.3f} | {tr[model]['backward']:.3f} | {tr[model]['optimizer']:.3f} | "
              f"{total / ref_total:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["params", "speed", "_case"])
    parser.add_argument("--backbone", default="tiny_dynamicrafter")
    parser.add_argument("--models", default="dynamicrafter,cami2v")
    parser.add_argument("--model", default=None)
    parser.add_argument("--phase", default="training", choices=["inference", "training"])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--zero1", action="store_true", help="ZeroRedundancyOptimizer (under torchrun: sharded)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.command == "params":
        print("| model | backbone | total | trainable (base frozen) | UNet |")
        print("|---|---|---|---|---|")
        for r in params_table():
            print(f"| {r['model']} | {r['backbone']} | {r['total']:,} | {r['trainable']:,} | {r['unet']:,} |")
    elif args.command == "_case":
        print(json.dumps(run_case(args)))
    else:
        print_speed(speed_table(args), args)


if __name__ == "__main__":
    main()
