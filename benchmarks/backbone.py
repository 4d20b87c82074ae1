"""Backbone cost tables: parameter counts of every model x backbone, and CamI2V Table 3 style memory
and time (inference; training forward / backward / optimizer step).

    python benchmarks/backbone.py params
        every method x backbone pair that runs (check_combination's), built on the meta device (no
        memory): total, trainable (the papers' setting: a pretrained base frozen, only the method's
        modules train) and UNet parameters.

    python benchmarks/backbone.py speed --backbone dynamicrafter_256 --models dynamicrafter,cami2v
        [--height 256 --width 256 --frames 16 --batch 1 --steps 25 --grad-checkpointing
         --precision fp16 --zero1 --device cuda --warmup 1 --repeat 3 --threads N
         --phases inference,training --cache-encoders]

Each (model, phase) runs in a fresh child process, so one case's allocator state cannot help or
hurt another. Models get random weights (full sizes need no released files; their text towers get a
stand-in tokenizer). Memory, per measured call: ``total``, the process's peak (CUDA: the allocator's
``max_memory_allocated``; CPU: the resident-set high-water mark ``VmHWM``, reset through
``/proc/self/clear_refs`` before the call), and ``peak``, that minus what the process held just
before the call. Times are the best of ``--repeat`` runs after ``--warmup`` untimed ones. The ratio
column compares each model with the first one of ``--models``, measured in the same run (machine
load affects both alike). See docs/models.md, "Memory and time".
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

FAMILY_MODELS = {  # backbone family -> models (conf/model) that run on it (check_combination's pairs)
    "dynamicrafter": ["dynamicrafter", "motionctrl", "cameractrl", "cami2v", "cvd"],
    "animatediff": ["animatediff", "motionctrl", "cameractrl", "cami2v", "cvd"],
}
PAIRS = {  # backbone config -> models
    "dynamicrafter_256": FAMILY_MODELS["dynamicrafter"],
    "dynamicrafter_512": FAMILY_MODELS["dynamicrafter"],
    "animatediff": FAMILY_MODELS["animatediff"],
    "tiny_dynamicrafter": FAMILY_MODELS["dynamicrafter"],
    "tiny_animatediff": FAMILY_MODELS["animatediff"],
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


def _total(device: torch.device, base: int) -> int:
    """The process's peak over the measured call, everything it holds included."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return _rss_kib("VmHWM") * 1024


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


def tokenizer_folder(path: Path) -> Path:
    """A stand-in CLIP BPE tokenizer (one id per character, no merges) for the full-size text towers,
    whose real tokenizer files are not here. Captions are padded to 77 tokens either way, so the
    tower's cost is that of the real one."""
    vocab = {}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = 49406
    vocab["<|endoftext|>"] = 49407
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return path


def _give_tokenizer(method, folder: Path) -> None:
    """Full-size text towers without their released tokenizer get the stand-in one."""
    text = getattr(method, "text_encoder", None) or getattr(method, "cond_stage_model", None)
    if hasattr(text, "load_tokenizer") and getattr(text, "tokenizer", None) is None:  # SD1.5 CLIP (AnimateDiff)
        text.load_tokenizer(folder)
    elif hasattr(text, "tokenizer_path") and not (text.tokenizer_path and (text.tokenizer_path / "vocab.json").is_file()):
        text.tokenizer_path = folder  # OpenCLIP (DynamiCrafter) without its tokenizer files


def run_case(args) -> dict:
    """One (model, phase) measurement, in this (child) process."""
    import tempfile

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # random weights must not wander into slow denormal arithmetic
    cfg = compose(args.model, args.backbone, [f"backbone.height={args.height}", f"backbone.width={args.width}",
                                              f"backbone.num_frames={args.frames}"])
    t0 = time.perf_counter()
    method = build(cfg, device=device, gradient_checkpointing=args.grad_checkpointing)
    build_s = time.perf_counter() - t0
    method.freeze_base()
    _give_tokenizer(method, tokenizer_folder(Path(tempfile.mkdtemp()) / "tokenizer"))
    batch = batch_for(cfg, args.batch, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else (lambda: torch.autocast(
        device.type, enabled=False))
    out = {"model": args.model, "phase": args.phase, "build_s": build_s,
           "params": count(method.parameters())}
    if args.phase == "inference":
        from camvid.diffusion.sampler import prepare_conditions, sample_latents

        method.eval()
        guidance = dict(cfg.model.guidance)

        def call() -> list[float]:
            marks = [time.perf_counter()]
            with torch.no_grad(), autocast():
                cond, shape = prepare_conditions(method, batch, None)  # encoders: video, text, image
                _sync(device)
                marks.append(time.perf_counter())
                z0 = sample_latents(method, cond, latent_shape=shape, num_steps=args.steps, guidance=guidance,
                                    generator=torch.Generator(device=device).manual_seed(0))
                _sync(device)
                marks.append(time.perf_counter())
                method.decode_latents(z0)
                _sync(device)
                marks.append(time.perf_counter())
            return [b - a for a, b in zip(marks, marks[1:])]

        for _ in range(args.warmup):
            call()
        base = _reset_peak(device)
        runs = [call() for _ in range(args.repeat)]
        best = min(runs, key=sum)
        out.update(peak=_peak(device, base), total=_total(device, base), encode=best[0],
                   per_step=best[1] / args.steps, decode=best[2])
        return out

    from camvid.diffusion.losses import diffusion_loss

    method.train()
    if args.cache_encoders:
        # the frozen encoders (VAE, text and image towers) run once here, and their weights are freed:
        # the timed step is then the denoiser's (UNet, projector, camera modules) plus the optimizer
        with torch.no_grad():
            x0 = method.encode_video(batch["video"])
            cached = method.conditions(batch, x0)
        method.encode_video = lambda video: x0
        method.conditions = lambda batch, latents=None: cached
        if hasattr(method, "null_text"):  # AnimateDiff encodes the empty caption in denoise (text dropout)
            with torch.no_grad():
                null = method.null_text(1)
            method.null_text = lambda batch_size: null.expand(batch_size, -1, -1)
        for encoder in method.encoder_modules():
            encoder.to("meta")
        out["encoders_cached"] = True
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

    def step() -> list[float]:
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

    for _ in range(args.warmup):  # without one, the timed optimizer step also creates its state
        step()
    base = _reset_peak(device)
    runs = [step() for _ in range(args.repeat)]
    out.update(peak=_peak(device, base), total=_total(device, base), forward=min(r[0] for r in runs),
               backward=min(r[1] for r in runs), optimizer=min(r[2] for r in runs), trainable=count(params))
    return out


def speed_table(args) -> list[dict]:
    rows = []
    flags = ("grad_checkpointing", "zero1", "cache_encoders")
    skip = ("command", "models", "model", "phase", "phases", *flags)
    for model in args.models.split(","):
        for phase in args.phases.split(","):
            cmd = [sys.executable, __file__, "_case", "--model", model, "--phase", phase,
                   *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in skip],
                   *[f"--{k.replace('_', '-')}" for k in flags if getattr(args, k)]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
            if proc.returncode:
                raise RuntimeError(f"{model} {phase} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress: full-size cases take minutes
    return rows


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def print_speed(rows: list[dict], args) -> None:
    print(f"backbone={args.backbone} {args.height}x{args.width}, {args.frames} frames, batch {args.batch}, "
          f"{args.device}, {args.precision}, {args.threads or torch.get_num_threads()} threads, grad checkpointing "
          f"{args.grad_checkpointing}, zero1 {args.zero1}, encoders cached in training {args.cache_encoders}; "
          f"{args.warmup} warm-up + best of {args.repeat} timed"
          + (f"; inference = {args.steps} DDIM step(s) with the model's guidance" if "inference" in args.phases else ""))
    print("peak = the measured call's peak above the memory held before it; total = the process's peak "
          "(weights, optimizer state and activations; on the CPU the resident-set high-water mark)")
    inf = {r["model"]: r for r in rows if r["phase"] == "inference"}
    tr = {r["model"]: r for r in rows if r["phase"] == "training"}
    if inf:
        print("\n| model | params | inference total GiB | peak GiB | encode s | s / DDIM step | decode s |")
        print("|---|---|---|---|---|---|---|")
        for model, r in inf.items():
            print(f"| {model} | {_count(r['params'])} | {_gib(r['total'])} | {_gib(r['peak'])} | {r['encode']:.1f} | "
                  f"{r['per_step']:.1f} | {r['decode']:.1f} |")
    if tr:
        ref = next(iter(tr))
        ref_total = sum(tr[ref][k] for k in ("forward", "backward", "optimizer"))
        print(f"\n| model | trainable | training total GiB | peak GiB | forward s | backward s | optimizer s | "
              f"step vs {ref} |")
        print("|---|---|---|---|---|---|---|---|")
        for model, r in tr.items():
            total = sum(r[k] for k in ("forward", "backward", "optimizer"))
            print(f"| {model} | {_count(r['trainable'])} | {_gib(r['total'])} | {_gib(r['peak'])} | "
                  f"{r['forward']:.2f} | {r['backward']:.2f} | {r['optimizer']:.2f} | {total / ref_total:.2f}x |")


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
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (the best is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each case (0: torch's default)")
    parser.add_argument("--phases", default="inference,training")
    parser.add_argument("--cache-encoders", action="store_true",
                        help="training: run the frozen encoders once before timing and free their weights "
                             "(fits a small machine; forward then excludes them)")
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
