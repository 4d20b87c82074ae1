"""Can the tiny CamI2V tell two cameras apart? One scene, opposite moves, overfit, sample both.

The simplest world in which a camera must be followed: one synthetic room, one start pose, and
``--pairs`` pairs of opposite camera moves (pure pans by default: rotation only, so the image motion
does not depend on depth). The tiny CamI2V is trained on those clips alone, then each clip is
sampled from its first frame and its own cameras, and every generated video is scored against its
own ground truth and against the opposite move's (MSE over frames 1..T-1). A model whose camera
path works scores clearly better against its own clip; a model that ignores the camera scores the
same against both (and no better than the first frame repeated).

    python benchmarks/camera_overfit.py                        # pans, camera modules on the tiny base
    python benchmarks/camera_overfit.py --train whole --base none --steps 400
    python benchmarks/camera_overfit.py --kind truck
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from camvid.assets import resolve_weights  # noqa: E402
from camvid.data import synthetic as syn  # noqa: E402
from camvid.diffusion.losses import diffusion_loss  # noqa: E402
from camvid.diffusion.sampler import sample_video  # noqa: E402
from camvid.geometry.cameras import relative_poses  # noqa: E402
from camvid.models.dynamicrafter import build_dynamicrafter_method  # noqa: E402


def opposite_moves(kind: str, frames: int, amount: float, start_yaw: float) -> list[np.ndarray]:
    """Two (T, 4, 4) camera-to-world paths from one pose: +amount and -amount of ``kind``
    (pan: yaw in radians; truck: sideways metres; forward: metres along the view)."""
    s = np.linspace(0.0, 1.0, frames)
    out = []
    for sign in (1.0, -1.0):
        yaw = np.full(frames, start_yaw)
        pos = np.zeros((frames, 3))
        fwd0 = np.array([math.sin(start_yaw), 0.0, math.cos(start_yaw)])
        right0 = np.array([math.cos(start_yaw), 0.0, -math.sin(start_yaw)])
        if kind == "pan":
            yaw = start_yaw + sign * amount * s
        elif kind == "truck":
            pos = sign * amount * s[:, None] * right0
        elif kind == "forward":
            pos = sign * amount * s[:, None] * fwd0
        else:
            raise ValueError(f"--kind must be pan, truck or forward, got {kind!r}")
        c2w = np.tile(np.eye(4), (frames, 1, 1))
        for i in range(frames):
            c2w[i, :3, :3] = syn.look_at_rotation(np.array([math.sin(yaw[i]), 0.0, math.cos(yaw[i])]))
            c2w[i, :3, 3] = pos[i]
        out.append(c2w)
    return out


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b) ** 2).mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="pan", choices=["pan", "truck", "forward"])
    p.add_argument("--amount", type=float, default=0.5, help="pan: radians over the clip; truck/forward: metres")
    p.add_argument("--pairs", type=int, default=1, help="opposite pairs (start yaws spread around the room)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train", default="camera", choices=["camera", "whole"],
                   help="camera: only CamI2V's camera modules (frozen base, as the demo); whole: every weight")
    p.add_argument("--base", default="builtin:tiny_dynamicrafter_base", help="base weights, or 'none'")
    p.add_argument("--attn", default="epipolar")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scene", type=int, default=5, help="scene seed of the first training scene")
    p.add_argument("--scenes", type=int, default=1, help="training scenes (seeds scene, scene+1, ...)")
    p.add_argument("--test-scenes", type=int, default=0,
                   help="unseen scenes (seeds after the training ones) sampled and scored too: generalisation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attention-levels", default=None,
                   help="UNet levels with attention (hence camera modules), e.g. '2' for the coarse level only "
                        "(the tiny UNet before 2026-11-30; its base is `git show 1197d21:src/camvid/assets/"
                        "tiny_dynamicrafter_base.safetensors`); default: the tiny UNet's own (1,2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    T, H = args.frames, args.size
    K = syn.default_intrinsics(H, H, 60)

    def render(seed: int) -> list[dict]:
        scene = syn.make_scene(seed, 128)
        out = []
        for j in range(args.pairs):
            for c2w in opposite_moves(args.kind, T, args.amount, 2 * math.pi * j / args.pairs + 0.3 + seed):
                frames, _ = syn.render_frames(scene, K, c2w, H, H)
                video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
                out.append({"video": video[None], "K": torch.from_numpy(K).float().expand(T, 3, 3)[None].clone(),
                            "c2w": relative_poses(torch.from_numpy(c2w).double(), 0).float()[None],
                            "cond_index": torch.zeros(1, dtype=torch.long), "frame_stride": torch.tensor([1]),
                            "caption": ["a room"], "num_views": 1})
        return out

    clips = [c for i in range(args.scenes) for c in render(args.scene + i)]
    tests = [c for i in range(args.test_scenes) for c in render(args.scene + args.scenes + i)]
    torch.manual_seed(args.seed)
    base = None if args.base == "none" else resolve_weights(args.base)
    common = dict(attn=args.attn, num_frames=T, image_hw=(H, H), parameterization="x0",
                  first_frame="replace_residual")
    overrides = None
    if args.attention_levels:
        overrides = {"attention_resolutions": [int(x) for x in args.attention_levels.split(",")]}
    m = build_dynamicrafter_method("cami2v", "tiny", pretrained=base, unet_overrides=overrides, **common)
    m.requires_grad_(args.train == "whole")
    if args.train == "camera":
        for mod in m.trainable_modules():
            mod.requires_grad_(True)
    for e in m.encoder_modules():
        e.requires_grad_(False)
    params = [q for q in m.parameters() if q.requires_grad]
    print(f"{args.kind} +-{args.amount}, {args.scenes} scene(s) x {args.pairs} pair(s) (+{args.test_scenes} unseen), {T} frames at {H}x{H}; train {args.train} "
          f"({sum(q.numel() for q in params):,} parameters), base {args.base}, {args.steps} steps, lr {args.lr}")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    losses = []
    for step in range(args.steps):
        batch = clips[step % len(clips)]
        loss = diffusion_loss(m, batch, generator=gen, cond_dropout={"uncond_prob": 0.05})["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"  step {step + 1}: loss {np.mean(losses[-50:]):.4f} ({time.time() - t0:.0f} s)", flush=True)
    m.eval()
    print("| clip | seen | MSE vs own GT | MSE vs opposite GT | first frame repeated vs own GT | own/opposite |")
    print("|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {"seen": [], "unseen": []}
    for group, items in (("seen", clips), ("unseen", tests)):
        for i, batch in enumerate(items):
            with torch.no_grad():
                out = sample_video(m, batch, num_steps=25, generator=torch.Generator().manual_seed(1), eta=0.0,
                                   spacing="trailing", set_alpha_to_one=True)
            own = batch["video"][0, 1:]
            opp = items[i ^ 1]["video"][0, 1:]
            gen_v = out[0, 1:]
            still = batch["video"][0, :1].expand_as(own)
            r = mse(gen_v, own) / mse(gen_v, opp)
            ratios[group].append(r)
            print(f"| {i} | {group} | {mse(gen_v, own):.4f} | {mse(gen_v, opp):.4f} | {mse(still, own):.4f} | {r:.2f} |",
                  flush=True)
    for group, values in ratios.items():
        if values:
            print(f"{group}: mean own/opposite MSE ratio {np.mean(values):.2f} (1.0 = camera ignored; << 1 = followed)")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
