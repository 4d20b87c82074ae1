"""PyTorch's fused CPU attention kernel alone, per tile, against the number of keys a tile reads.

    python benchmarks/fused_widths.py                          # 32 queries x 5 heads of 64, 1-100 keys
    python benchmarks/fused_widths.py --keys 36 44 48 56 64 --repeat 25

The block-sparse kernel (``camvid.attention.blocksparse``) calls
``_scaled_dot_product_flash_attention_for_cpu`` once per chunk of tiles, batch = tiles x heads, with
an additive bias as the sub-mask. This times that call (forward) and its backward on random inputs in
the kernel's memory layout (queries (tiles, Q, H, D) and keys/values packed side by side, viewed as
(tiles, H, keys, D)), half the bias masked, for each key count round-robin (load from other programs
hits every width alike), and prints the median time per tile. It is the measurement behind
``FORWARD_KEY_ALIGN``: the forward's time rises with the key count modulo 16 and drops at each
multiple of 16, the backward's grows smoothly.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def inputs(tiles: int, queries: int, keys: int, heads: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(tiles, queries, heads, dim, generator=g).transpose(1, 2)
    kv = torch.randn(tiles, keys, 2, heads, dim, generator=g)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    bias = torch.where(torch.rand(tiles, 1, queries, keys, generator=g) < 0.5, 0.0, float("-inf"))
    bias[..., 0] = 0.0  # every query keeps a key
    return q, k, v, bias


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", nargs="*", type=int, default=list(range(1, 101)))
    p.add_argument("--tiles", type=int, default=256)
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--heads", type=int, default=5)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args(argv)
    if min(args.keys) < 1 or min(args.tiles, args.queries, args.heads, args.dim, args.threads, args.repeat) < 1:
        p.error("every size, --threads and --repeat must be >= 1")
    torch.set_num_threads(args.threads)
    calls = {}
    for U in args.keys:
        q, k, v, bias = inputs(args.tiles, args.queries, U, args.heads, args.dim)
        o, lse = _flash(q, k, v, attn_mask=bias)
        dout = torch.randn_like(o)
        calls[U] = (lambda q=q, k=k, v=v, b=bias: _flash(q, k, v, attn_mask=b),
                    lambda q=q, k=k, v=v, b=bias, o=o, lse=lse, d=dout: _flash_backward(
                        d, q, k, v, o, lse, 0.0, False, attn_mask=b))
    times = {U: ([], []) for U in args.keys}
    for _ in range(args.repeat):
        for U, fns in calls.items():
            for fn, out in zip(fns, times[U]):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    rows = [{"keys": U, "fwd_us": 1e6 * statistics.median(f) / args.tiles,
             "bwd_us": 1e6 * statistics.median(b) / args.tiles} for U, (f, b) in times.items()]
    print(f"# torch {torch.__version__}, {args.threads} threads; {args.tiles} tiles of {args.queries} queries x "
          f"{args.heads} heads of {args.dim}; median of {args.repeat} rounds, per tile")
    print("| keys | keys mod 16 | forward (us) | backward (us) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['keys']} | {r['keys'] % 16} | {r['fwd_us']:.1f} | {r['bwd_us']:.1f} |")
    return rows


if __name__ == "__main__":
    main()
