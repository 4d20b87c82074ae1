"""What ``camvid.attention.capture`` costs and whether it stays exact, at full size, on every path.

    python benchmarks/attention_capture.py                    # CPU: 256x256 model, top level 32x32, 8 frames
    python benchmarks/attention_capture.py --size 512x320     # DynamiCrafter-512 top level 40x64, 16 frames (GPU)

One CamI2V epipolar layer (4 registers, ``--heads`` heads of 64 channels, output projection randomised
so it computes something) on a batch of ``--batch`` clips of a smooth random camera path, per
attention path: the forward without capture (the reference, measured in the same run), the same
forward inside ``capture`` with ``--queries`` query pixels and all heads, and their ratio (best of
``--repeat``). Checked on the way: the captured forward's output equals the reference bit for bit,
the probabilities of every query sum to 1 with the registers, and one query row equals a float64
softmax of the layer's own q, k and the dense mask row.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

SIZES = {"256x256": ((256, 256), 8), "512x320": ((320, 512), 16)}  # name -> (image (H, W), frames)


def cameras(B: int, T: int, hw: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    H, W = hw
    K = torch.tensor([[0.9 * W, 0.0, W / 2], [0.0, 0.9 * W, H / 2], [0.0, 0.0, 1.0]]).expand(B, T, 3, 3).clone()
    c2w = torch.eye(4).repeat(B, T, 1, 1)
    for b in range(B):
        direction = torch.randn(3, generator=g)
        yaw = 0.4 * (float(torch.rand(1, generator=g)) - 0.5)
        for t in range(T):
            a = yaw * t / T
            c2w[b, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
            c2w[b, t, :3, 3] = 0.3 * t / T * direction / direction.norm()
    return K.to(device), c2w.to(device)


def timed(fn, repeat: int, device) -> tuple[float, torch.Tensor]:
    best, out = math.inf, None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv=None) -> None:
    from camvid.attention import AttentionContext, Query, build_cross_frame_attention, capture
    from camvid.attention.context import PATHS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="256x256")
    p.add_argument("--batch", type=int, default=2, help="clips (2: a conditional and an unconditional branch)")
    p.add_argument("--heads", type=int, default=5)
    p.add_argument("--queries", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    (H, W), T = SIZES[args.size]
    feat_hw = (H // 8, W // 8)  # the top UNet level (latent = image / 8)
    hw = feat_hw[0] * feat_hw[1]
    C = 64 * args.heads
    torch.manual_seed(0)
    block = build_cross_frame_attention("epipolar", C, args.heads, num_register_tokens=4).to(device).eval()
    with torch.no_grad():
        torch.nn.init.normal_(block.epipolar_attn.to_out[0].weight, std=0.02)
    x = torch.randn(args.batch, T, hw, C, device=device)
    K, c2w = cameras(args.batch, T, (H, W), device)
    queries = [Query(T - 1 - i % T, (0.2 + 0.6 * i / max(1, args.queries - 1)) * W, 0.5 * H) for i in range(args.queries)]
    print(f"{args.size}: layer at {feat_hw[0]}x{feat_hw[1]}, {T} frames, batch {args.batch}, {args.heads} heads x 64, "
          f"{args.queries} queries, {device}")
    print(f"{'path':<8}{'plain ms':>10}{'capture ms':>12}{'ratio':>8}  {'bit-identical':<14}{'max |sum-1|':>12}"
          f"{'max |p - ref|':>15}")
    for path in [q for q in PATHS if q != "auto"] + ["auto"]:
        try:
            AttentionContext(path=path)
        except ValueError:
            continue

        def context(path=path):
            return AttentionContext(K=K, c2w=c2w, image_hw=(H, W), path=path)

        with torch.no_grad():
            try:
                block(x, context(), feat_hw)  # warm-up (kernels, compilation)
            except (RuntimeError, ValueError) as err:  # a path this device cannot run (e.g. flex on CPU)
                print(f"{path:<8} skipped: {str(err).splitlines()[0][:80]}")
                continue
            plain_s, reference = timed(lambda: block(x, context(), feat_hw), args.repeat, device)

            def captured():
                with capture(block, queries=queries) as maps:
                    out = block(x, context(), feat_hw)
                return out, maps

            cap_s, (out, maps) = timed(captured, args.repeat, device)
        layer = next(iter(maps))
        total = layer.probs.sum((-3, -2, -1)) + layer.registers.sum(-1)
        # one row by brute force: float64 softmax of the layer's own q, k over registers + the dense mask row
        attn, qu = block.epipolar_attn, maps.queries[0]
        r, c = qu.cell((H, W), feat_hw)
        token = qu.frame * hw + r * feat_hw[1] + c
        tokens = x.reshape(args.batch, T * hw, C)
        with torch.no_grad():
            q = attn.to_q(tokens[0, token]).double().view(args.heads, 64)
            k = attn.to_k(tokens[0]).double().view(-1, args.heads, 64)
            reg = attn.to_k(attn.register_tokens[0]).double().view(-1, args.heads, 64)
        row = context().runs("all", feat_hw).rows(token, token + 1)[0, 0]
        logits = torch.einsum("hd,lhd->hl", q, k).masked_fill(~row, float("-inf"))
        ref = torch.softmax(torch.cat([torch.einsum("hd,rhd->hr", q, reg), logits], -1) / math.sqrt(64), -1).cpu()
        got = torch.cat([layer.registers[0, :, 0], layer.probs[0, :, 0].reshape(args.heads, -1)], -1).double()
        print(f"{path:<8}{plain_s * 1e3:>10.1f}{cap_s * 1e3:>12.1f}{cap_s / plain_s:>8.2f}  "
              f"{str(torch.equal(out, reference)):<14}{float((total - 1).abs().max()):>12.1e}"
              f"{float((got - ref).abs().max()):>15.1e}")


if __name__ == "__main__":
    main()
