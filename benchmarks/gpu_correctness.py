"""Attention paths on the GPU against one dense SDPA call, and the FlexAttention block sparsity per level.

    python benchmarks/gpu_correctness.py                  # CUDA: values and gradients, then sparsity
    python benchmarks/gpu_correctness.py --sparsity-only  # any machine: the block-sparsity table

Part 1 (CUDA only): at 256x256 / 32x32 (16 frames, C=320, 5 heads) every variant runs through the
dense, block-sparse and FlexAttention paths, forward and backward, and is compared with the same
module over a stored dense bool mask (one SDPA call, the public CamI2V computation). FlexAttention's
backward does not run on the CPU, so this is where it is checked.
Part 2: per UNet level of 256x256 and 512x320, the share of (query block, key block) pairs of
128 x 128 tokens that FlexAttention skips for each mask kind, next to the mask's own density: the
skipped share bounds the GPU speed-up over unmasked attention (about 1 / (1 - sparsity)).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention import SIZES, cameras, levels, randomize_zero_parameters, view_cameras  # noqa: E402

from camvid.attention import AttentionContext, build_cross_frame_attention  # noqa: E402

KINDS = {"epipolar": "all", "epipolar_ref": "ref", "cross_video": "cross"}


def correctness(device, frames=16):
    print("## CUDA: every path against one dense bool-mask SDPA call (256x256, level 32x32)\n")
    print("| variant | path | max abs diff output | max abs diff input grad | max abs diff weight grads |")
    print("|---|---|---|---|---|")
    K, c2w = cameras(frames, (256, 256))
    feat_hw = (32, 32)
    for variant, kind in KINDS.items():
        views = 2 if variant == "cross_video" else 1
        Kb, c2wb = (t.to(device) for t in view_cameras(K, c2w, views))
        kw = {"norm_num_groups": 32} if variant == "cross_video" else {}
        module = randomize_zero_parameters(build_cross_frame_attention(variant, 320, 5, **kw).to(device))
        x = torch.randn(views, frames, 1024, 320, device=device)

        def ctx(path, Kb=Kb, c2wb=c2wb, views=views):
            return AttentionContext(K=Kb, c2w=c2wb, image_hw=(256, 256), num_views=views, path=path,
                                    cond_index=torch.zeros(views, dtype=torch.long, device=device))

        def run(c, x=x, module=module):
            xi = x.clone().requires_grad_()
            module.zero_grad()
            y = module(xi, c, feat_hw)
            y.square().mean().backward()
            return y.detach(), xi.grad, [p.grad.clone() for p in module.parameters() if p.grad is not None]

        stored = ctx("dense")
        stored.put_mask(kind, feat_hw, ctx("dense").mask(kind, feat_hw))
        want = run(stored)
        for path in ("dense", "sparse", "flex"):
            try:
                got = run(ctx(path))
            except Exception as err:  # report and go on: the table is the product
                print(f"| {variant} | {path} | error: {type(err).__name__}: {str(err)[:120]} | | |")
                continue
            dw = max(float((a - b).abs().max()) for a, b in zip(got[2], want[2]))
            print(f"| {variant} | {path} | {float((got[0] - want[0]).abs().max()):.1e} | "
                  f"{float((got[1] - want[1]).abs().max()):.1e} | {dw:.1e} |")
        sys.stdout.flush()


def sparsity(frames=16):
    print("\n## FlexAttention block sparsity (128 x 128 token blocks), 16 frames\n")
    print("| size | level (h x w) | kind | tokens | mask density | visited blocks | block sparsity | "
          "speed-up bound vs unmasked |")
    print("|---|---|---|---|---|---|---|---|")
    for size, image_hw in SIZES.items():
        K, c2w = cameras(frames, image_hw)
        for feat_hw in levels(image_hw, 4):
            for variant, kind in KINDS.items():
                views = 2 if variant == "cross_video" else 1
                Kb, c2wb = view_cameras(K, c2w, views)
                ctx = AttentionContext(K=Kb, c2w=c2wb, image_hw=image_hw, num_views=views,
                                       cond_index=torch.zeros(views, dtype=torch.long))
                runs = ctx.runs(kind, feat_hw)
                regs = 4 if kind != "cross" else 0
                fbm = ctx.flex_block_mask(kind, feat_hw, regs)
                hw = feat_hw[0] * feat_hw[1]
                density = float((runs.end.long() - runs.start.long()).clamp(min=0).sum()) / (
                    runs.start.shape[0] * runs.num_queries * runs.start.shape[2] * hw)
                print(f"| {size} | {feat_hw[0]}x{feat_hw[1]} | {kind} | {runs.num_queries} | {100 * density:.1f}% | "
                      f"{fbm.visited_blocks}/{fbm.total_blocks} | {100 * fbm.sparsity:.1f}% | "
                      f"{1 / max(1e-9, 1 - fbm.sparsity):.1f}x |")
                sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity-only", action="store_true")
    args = ap.parse_args()
    print(f"# command: python benchmarks/gpu_correctness.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# torch {torch.__version__}, cuda available: {torch.cuda.is_available()}\n")
    if not args.sparsity_only:
        if torch.cuda.is_available():
            correctness(torch.device("cuda"))
        else:
            print("(no CUDA device: part 1 skipped)")
    sparsity()


if __name__ == "__main__":
    main()
