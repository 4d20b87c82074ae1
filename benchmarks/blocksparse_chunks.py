"""Block-sparse kernel alone at one level, for several chunk sizes: forward and forward+backward.

    python benchmarks/blocksparse_chunks.py                       # 32x32, ref and cross, 1 thread
    python benchmarks/blocksparse_chunks.py --kinds all --threads 2 --chunk-keys 65536 8192
    python benchmarks/blocksparse_chunks.py --kinds ref --threads 2 --chunk-keys 16384 --per-frame --repeat 15

Only ``camvid.attention.blocksparse`` on random q and packed k/v of the level's shape (C = 320,
5 heads, 16 frames; ``cross``: one pair of videos), with the plan ``AttentionContext`` builds
(the tiling it chooses) packed into chunks of about ``--chunk-keys`` gathered keys (at least
``--min-tiles`` tiles, by default ``RUNS_MIN_CHUNK_TILES``, at most 2^16 keys, as
``camvid.attention.sparse.RUNS_CHUNK_KEYS`` does).
Plans are timed round-robin, median of ``--repeat`` rounds; "cpu" is the process CPU time (all
threads), less sensitive than wall time to other jobs on a shared host. Every plan's outputs and
gradients are compared with the first plan's (they must agree to rounding). ``--per-frame`` also
times each plan with the tilings of one query frame only (no band-sorted tiles across frames, which
``ref`` plans may choose: ``camvid.attention.sparse._band_sort_keys``), the plan before them. ``--band-tiles 32 64 128 256`` instead times ``epipolar_ref``'s kernel with
band-sorted tiles of each size at several levels and fits the cost model that picks among them
(``camvid.attention.sparse.GATHER_ROW_PAIRS``, ``TILE_PAIRS``):

    python benchmarks/blocksparse_chunks.py --band-tiles 32 64 128 256 --threads 2 --repeat 15 --kernel fused
    python benchmarks/blocksparse_chunks.py --band-tiles 32 64 128 --threads 2 --repeat 15 --kernel compiled
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention import SIZES, cameras, view_cameras  # noqa: E402  (the benchmark's RealEstate10K-like clip)


def plans_for(kind, image_hw, feat_hw, chunk_keys, min_tiles, per_frame=False):
    """{(chunk keys, tiling): plan}, tiling "chosen" (what the context builds) and with ``per_frame``
    also "per-frame" (the same without band-sorted tiles across frames); and the batch size."""
    import camvid.attention.context as context_mod
    from camvid.attention import AttentionContext, sparse
    from camvid.attention.blocksparse import prepare_plan
    from camvid.attention.sparse import build_tile_plan_from_runs

    B = 2 if kind == "cross" else 1
    K, c2w = view_cameras(*cameras(16, image_hw), B)
    plans = {}
    min_tiles = sparse.RUNS_MIN_CHUNK_TILES if min_tiles is None else min_tiles
    original, bins = context_mod.build_tile_plan_from_runs, sparse._BAND_ANGLE_BINS
    try:
        for ck in chunk_keys:
            for tiling in ("chosen", "per-frame") if per_frame else ("chosen",):
                sparse._BAND_ANGLE_BINS = bins if tiling == "chosen" else ()
                context_mod.build_tile_plan_from_runs = functools.partial(build_tile_plan_from_runs, chunk_keys=ck,
                                                                          min_chunk_tiles=min_tiles)
                ctx = AttentionContext(K=K, c2w=c2w, image_hw=image_hw, cond_index=torch.zeros(B, dtype=torch.long),
                                       num_views=B, path="sparse")
                plan = ctx.tile_plan(kind, feat_hw)
                prepare_plan(plan, 0, torch.float32)
                plans[(ck, tiling)] = plan
    finally:
        context_mod.build_tile_plan_from_runs, sparse._BAND_ANGLE_BINS = original, bins
    return plans, (B * 16 if kind == "cross" else B)


def band_tile_plans(image_hw, feat_hw, sizes):
    """{queries per tile: plan} of ``epipolar_ref`` with band-sorted tiles of that size only (the best of
    the orientation binnings), the candidates ``camvid.attention.sparse`` weighs with its cost model."""
    from camvid.attention import AttentionContext, sparse
    from camvid.attention.blocksparse import prepare_plan

    K, c2w = cameras(16, image_hw)
    original = sparse._candidate_tiles

    def band_only(N, frames, fhw, order, tile_hw, tile_frames, one_key_frame=None, size=None):
        return sparse._band_tilings(one_key_frame, N, fhw[1], [size])
    plans = {}
    try:
        for size in sizes:
            sparse._candidate_tiles = functools.partial(band_only, size=size)
            ctx = AttentionContext(K=K, c2w=c2w, image_hw=image_hw, cond_index=torch.zeros(1, dtype=torch.long),
                                   path="sparse")
            plans[size] = ctx.tile_plan("ref", feat_hw)
            prepare_plan(plans[size], 4, torch.float32)
    finally:
        sparse._candidate_tiles = original
    return plans


def band_tiles(args) -> list[dict]:
    """Forward and forward+backward time of ``epipolar_ref``'s kernel (4 register tokens) per band tile
    size and level, and the least-squares fit of the forward, time = a * pairs + b * gathered rows + c *
    tiles, behind ``GATHER_ROW_PAIRS`` (b / a) and ``TILE_PAIRS`` (c / a) of ``camvid.attention.sparse``."""
    from camvid.attention import cpu_kernel, sparse
    from camvid.attention.blocksparse import block_sparse_attention_packed

    gather, per_tile = sparse.tile_costs(torch.device("cpu"))  # the forward's constants (no gradient recorded)
    print(f"kernel: {'compiled' if cpu_kernel.available() else 'fused'} (CAMVID_SPARSE_KERNEL)\n")
    print("| level | tile queries | tiles | gathered rows | computed pairs | fwd wall (ms) | fwd+bwd wall (ms) | "
          "model (pairs) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for spec in args.band_levels:
        size, level = spec.split(":")
        plans = band_tile_plans(SIZES[size], tuple(int(v) for v in level.split("x")), args.band_tiles)
        first = next(iter(plans.values()))
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, first.num_queries, 5, 64, generator=g, requires_grad=True)
        kv = torch.randn(1, 4 + first.num_keys, 2, 5, 64, generator=g, requires_grad=True)
        times = {(n, m): [] for n in plans for m in ("fwd", "step")}
        for r in range(args.repeat + 1):  # round 0 warms up
            for n, plan in plans.items():
                t = time.perf_counter()
                with torch.no_grad():
                    block_sparse_attention_packed(q, kv, plan, 4)
                t1 = time.perf_counter()
                q.grad = kv.grad = None
                block_sparse_attention_packed(q, kv, plan, 4).square().mean().backward()
                if r:
                    times[(n, "fwd")].append(t1 - t)
                    times[(n, "step")].append(time.perf_counter() - t1)
        for n, plan in plans.items():
            tiles = sum(c.key_ids.shape[0] for c in plan.chunks)
            gathered = sum(c.key_ids.numel() for c in plan.chunks)
            pairs = sum(c.key_ids.numel() * c.query_ids.shape[1] for c in plan.chunks)
            model = pairs + gather * gathered + per_tile * tiles
            rows.append({"level": level, "queries": n, "tiles": tiles, "rows": gathered, "pairs": pairs,
                         "ms": 1e3 * statistics.median(times[(n, "fwd")]),
                         "step_ms": 1e3 * statistics.median(times[(n, "step")]), "model": model})
            print(f"| {level} | {n} | {tiles} | {gathered} | {pairs} | {rows[-1]['ms']:.2f} | "
                  f"{rows[-1]['step_ms']:.2f} | {model} |")
        sys.stdout.flush()
    if len(rows) >= 3:
        A = torch.tensor([[r["pairs"], r["rows"], r["tiles"]] for r in rows], dtype=torch.float64)
        y = torch.tensor([r["ms"] for r in rows], dtype=torch.float64)
        a, b, c = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1).tolist()
        if a > 0:
            print(f"\nfit: time = {a:.3e} ms x (pairs + {b / a:.1f} x gathered rows + {c / a:.0f} x tiles); "
                  f"in use for this kernel: {gather} and {per_tile}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256x256", choices=list(SIZES))
    ap.add_argument("--level", default="32x32", help="feature map h x w, e.g. 32x32 or 40x64")
    ap.add_argument("--kinds", nargs="*", default=["ref", "cross"], choices=["all", "ref", "cross"])
    ap.add_argument("--chunk-keys", nargs="*", type=int, default=[1 << 16, 1 << 13])
    ap.add_argument("--min-tiles", type=int, default=None, help="default: camvid.attention.sparse.RUNS_MIN_CHUNK_TILES")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--per-frame", action="store_true",
                    help="also time each plan with one-frame tilings only (no band-sorted tiles across frames)")
    ap.add_argument("--band-tiles", nargs="*", type=int, default=None,
                    help="instead: epipolar_ref with band-sorted tiles of these query counts only, per level of "
                         "--band-levels, and the fit behind camvid.attention.sparse.GATHER_ROW_PAIRS")
    ap.add_argument("--band-levels", nargs="*", default=["256x256:32x32", "512x320:40x64", "512x320:20x32"],
                    help="SIZE:LEVEL pairs for --band-tiles")
    ap.add_argument("--kernel", choices=["auto", "compiled", "fused"], default=None,
                    help="the block-sparse forward kernel (sets CAMVID_SPARSE_KERNEL; default: as set, else auto)")
    args = ap.parse_args()
    if args.kernel:
        os.environ["CAMVID_SPARSE_KERNEL"] = args.kernel
    torch.set_num_threads(args.threads)
    if args.band_tiles:
        print(f"# command: python benchmarks/blocksparse_chunks.py {' '.join(sys.argv[1:])}".rstrip())
        print(f"# torch {torch.__version__}, {args.threads} threads, median of {args.repeat} rounds; "
              f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        band_tiles(args)
        return
    feat_hw = tuple(int(v) for v in args.level.split("x"))
    print(f"# command: python benchmarks/blocksparse_chunks.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# torch {torch.__version__}, {args.threads} threads, median of {args.repeat} rounds; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| kind | chunk keys | tiling | chunks | computed pairs | fwd wall (s) | fwd cpu (s) | fwd+bwd wall (s) | "
          "fwd+bwd cpu (s) | max diff to first |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    from camvid.attention.blocksparse import block_sparse_attention_packed

    for kind in args.kinds:
        plans, N = plans_for(kind, SIZES[args.size], feat_hw, args.chunk_keys, args.min_tiles, args.per_frame)
        first = next(iter(plans.values()))
        g = torch.Generator().manual_seed(0)
        q = torch.randn(N, first.num_queries, 5, 64, generator=g, requires_grad=True)
        kv = torch.randn(N, first.num_keys, 2, 5, 64, generator=g, requires_grad=True)
        w = torch.randn(q.shape, generator=g)

        def fwd(plan, q=q, kv=kv):
            with torch.no_grad():
                return block_sparse_attention_packed(q, kv, plan, 0)

        def step(plan, q=q, kv=kv, w=w):
            q.grad = kv.grad = None
            (block_sparse_attention_packed(q, kv, plan, 0) * w).sum().backward()
            return q.grad.clone(), kv.grad.clone()

        times = {(ck, f): [] for ck in plans for f in ("fwd", "step")}
        results = {}
        for r in range(args.repeat + 1):  # round 0 warms up (workspaces, first-touch pages)
            for ck, plan in plans.items():
                for name, f in (("fwd", fwd), ("step", step)):
                    t, c = time.perf_counter(), time.process_time()
                    res = f(plan)
                    if r:
                        times[(ck, name)].append((time.perf_counter() - t, time.process_time() - c))
                    else:
                        results.setdefault(ck, []).extend(res if isinstance(res, tuple) else [res])
        ref = results[next(iter(plans))]
        for ck, plan in plans.items():
            diff = max(float((a - b).abs().max()) for a, b in zip(results[ck], ref))
            cells = [statistics.median(x[i] for x in times[(ck, f)]) for f in ("fwd", "step") for i in (0, 1)]
            print(f"| {kind} | {ck[0]} | {ck[1]} | {len(plan.chunks)} | {100 * plan.computed_fraction:.1f}% | "
                  + " | ".join(f"{v:.3f}" for v in cells) + f" | {diff:.1e} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
