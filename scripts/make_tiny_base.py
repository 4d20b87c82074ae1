"""Train and export the tiny pretrained DynamiCrafter base that `make demo` and `scale=tiny` start from.

The papers' recipe is a pretrained, camera-agnostic video model with new camera modules trained on
top (CamI2V, CameraCtrl and MotionCtrl all freeze the base). The tiny world has no released base, so
this script makes one, once, on the CPU, and the repository ships the result
(``src/camvid/assets/``, ``pretrained=builtin:tiny_dynamicrafter_base``; docs/diffusion.md "The tiny pretrained base"):

1. render synthetic rooms (data_prep/synthetic.py) with a seed the demo's and the tables' scenes do
   not use, so their held-out clips stay unseen by the base;
2. pack them into shards (data_prep/make_shards.py);
3. train the tiny DynamiCrafter *without* camera (src/train.py experiment=tiny_base): it learns the
   rooms' look and to denoise a video from its conditioning frame, never which camera moved;
4. export every base tensor (UNet, image projector and the frozen tiny encoders) into one
   safetensors file with the recipe in its metadata, plus a JSON card beside it.

Every stage is a command a researcher can run by hand; this script chains them and times them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "camvid" / "assets" / "tiny_dynamicrafter_base.safetensors"
sys.path.insert(0, str(REPO / "scripts"))
from demo import RENDER_FRAMES, SIZE, run  # noqa: E402  (one stage runner for both scripts: log file, timing, exit on failure)


def export_base(ckpt: Path, out: Path, card: dict) -> dict:
    """Every tensor of the base model trained in ``ckpt`` (a ``step_<N>`` directory of a
    ``model=dynamicrafter`` run) -> ``out`` (safetensors, fp32) and ``out.with_suffix('.json')``.

    The trained part (UNet, image projector) comes from the checkpoint; the frozen tiny encoders are
    re-created by the run's own config and seed, and are stored too, so a load needs nothing else."""
    sys.path.insert(0, str(REPO / "src"))
    from safetensors.torch import save_file

    from camvid.sampling import load_trained_method

    cfg, method = load_trained_method(Path(ckpt))
    if cfg.model.name != "dynamicrafter" or method.camera is not None:
        raise ValueError(f"{ckpt}: a base is a camera-free model=dynamicrafter run, this one is model={cfg.model.name}")
    state = {k: v.detach().float().contiguous() for k, v in method.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: json.dumps(v) for k, v in card.items()}
    save_file(state, str(out), metadata=meta)
    out.chmod(0o644)  # safetensors writes 0600; the file is shipped and shared
    card = dict(card, file=out.name, tensors=len(state), parameters=int(sum(v.numel() for v in state.values())),
                bytes=out.stat().st_size)
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="outputs/tiny_base", help="data, run and logs of the base training")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the exported weights (safetensors)")
    p.add_argument("--clips", type=int, default=160, help="synthetic clips to render (all for training)")
    p.add_argument("--data-seed", type=int, default=1, help="scene seed (the demo and tables render seed 0)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: conf/experiment/tiny_base.yaml)")
    p.add_argument("--seed", type=int, default=0, help="training seed (initial weights, data order, noise)")
    p.add_argument("--export-only", metavar="CKPT", default=None,
                   help="skip rendering and training: export this step_<N> checkpoint directory")
    p.add_argument("--train-seconds", type=float, default=None,
                   help="with --export-only: the wall time of that run's training, for the card")
    p.add_argument("--note", default="", help="a sentence for the card (e.g. the machine's load)")
    args = p.parse_args(argv)

    work = Path(args.work) if Path(args.work).is_absolute() else REPO / args.work
    data, run_dir, logs = work / "data", work / "run", work / "logs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true")
    py = sys.executable
    timings: dict[str, float] = {}
    if args.export_only:
        ckpt = Path(args.export_only)
        if args.train_seconds is not None:
            timings["train"] = args.train_seconds
    else:
        if not (data / "captions.json").is_file():
            run("render", [
                py, "data_prep/synthetic.py", "--out", str(data), "--num-clips", str(args.clips), "--num-frames",
                str(RENDER_FRAMES), "--height", str(SIZE), "--width", str(SIZE), "--texture-size", "128",
                "--seed", str(args.data_seed),
                "--test-every", "0"], timings, env, logs)
        if not (data / "shards" / "train" / "manifest.json").is_file():
            run("shards", [
                py, "data_prep/make_shards.py", "re10k", "--root", str(data), "--split", "train",
                "--out", str(data / "shards" / "train"), "--shard-size", "8"], timings, env, logs)
        steps = [f"trainer.max_steps={args.steps}"] if args.steps else []
        run("train", [
            py, "src/train.py", "experiment=tiny_base", f"data.root={data}", f"seed={args.seed}", *steps,
            f"hydra.run.dir={run_dir}", "hydra.job_logging.root.level=WARNING"], timings, env, logs)
        sys.path.insert(0, str(REPO / "src"))
        from camvid.training.checkpoint import find_latest

        ckpt = find_latest(run_dir / "checkpoints")
        if ckpt is None:
            sys.exit(f"no checkpoint under {run_dir / 'checkpoints'}")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    card = {
        "what": f"tiny DynamiCrafter base (camera-agnostic, x0-prediction, first_frame=replace), "
                f"8 frames {SIZE}x{SIZE}, trained on synthetic rooms",
        "command": "python scripts/make_tiny_base.py" + (f" --steps {args.steps}" if args.steps else ""),
        "recipe": "src/train.py experiment=tiny_base",
        "data": f"{args.clips} synthetic clips, seed {args.data_seed}, {RENDER_FRAMES} frames, {SIZE}x{SIZE}, texture 128",
        "seed": args.seed,
        "step": int(state["step"]),
        "train_seconds": round(timings["train"], 1) if "train" in timings else None,
        "note": args.note,
    }
    card = export_base(ckpt, Path(args.out), card)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
