"""Overfit the tiny CamI2V to one synthetic clip with each parameterization and sample it back.

The diagnosis behind the tiny CPU recipe (docs/diffusion.md): with the same model, data, steps and
sampler, eps- and v-prediction sample per-pixel noise after a few hundred steps, x0-prediction
samples the clip.

    python benchmarks/parameterization_overfit.py                  # 8 frames at 32x32, 200 steps
    python benchmarks/parameterization_overfit.py --steps 400 --params x0
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from camvid.data import synthetic as syn  # noqa: E402
from camvid.diffusion.losses import diffusion_loss  # noqa: E402
from camvid.diffusion.sampler import sample_video  # noqa: E402
from camvid.geometry.cameras import relative_poses  # noqa: E402
from camvid.models.dynamicrafter import build_dynamicrafter_method  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4 / ((a - b) ** 2).mean().item())  # images in [-1, 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--params", default="eps,v,x0")
    args = p.parse_args()
    T, H = args.frames, args.size
    scene = syn.make_scene(3, 128)
    c2w = syn.make_trajectory("orbit", T, 3)
    K = syn.default_intrinsics(H, H, 60)
    frames, _ = syn.render_frames(scene, K, c2w, H, H)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    batch = {"video": video[None], "K": torch.from_numpy(K).float().expand(T, 3, 3)[None].clone(),
             "c2w": relative_poses(torch.from_numpy(c2w).double(), 0).float()[None],
             "cond_index": torch.zeros(1, dtype=torch.long), "frame_stride": torch.tensor([1]),
             "caption": ["a room"], "num_views": 1}
    print(f"one clip, {T} frames at {H}x{H}, {args.steps} steps, AdamW lr {args.lr}, whole model trained; "
          "DDIM 25 steps, eta 0, no guidance, DynamiCrafter's conditioning (first_frame=concat)")
    print("| parameterization | final loss | first frame PSNR | all frames PSNR | CPU s/step |")
    print("|---|---|---|---|---|")
    for param in args.params.split(","):
        torch.manual_seed(0)
        m = build_dynamicrafter_method("cami2v", "tiny", num_frames=T, image_hw=(H, H), parameterization=param)
        m.requires_grad_(True)
        for e in m.encoder_modules():
            e.requires_grad_(False)
        params = [q for q in m.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0)
        gen = torch.Generator().manual_seed(0)
        c0 = time.process_time()
        for _ in range(args.steps):
            loss = diffusion_loss(m, batch, generator=gen, cond_dropout={"uncond_prob": 0.05})["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        cpu = (time.process_time() - c0) / args.steps
        m.eval()
        out = sample_video(m, batch, num_steps=25, generator=torch.Generator().manual_seed(1), eta=0.0,
                           spacing="uniform")
        print(f"| {param} | {loss.item():.3g} | {psnr(out[0, 0], video[0]):.1f} dB | {psnr(out[0], video):.1f} dB "
              f"| {cpu:.2f} |", flush=True)


if __name__ == "__main__":
    main()
