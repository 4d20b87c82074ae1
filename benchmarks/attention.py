"""Speed and memory of camera masks and cross-frame attention, against the public CamI2V way.

    python benchmarks/attention.py            # 256x256 and 512x320, 16 frames, every UNet level
    python benchmarks/attention.py --quick    # CI size: 256x256, 8 frames, levels 16x16 and below

Every case runs in a fresh child process (``subprocess``) so one case's allocator state cannot help
or hurt another. Peak memory is the child's resident-set high-water mark (``VmHWM`` from
``/proc/self/status``) during the measured call, minus its resident size just before it; the mark is
reset before the call by writing ``5`` to ``/proc/self/clear_refs`` (Linux). It counts every
allocation torch makes on the CPU, temporaries included. Times are the best of ``--repeat`` runs.

NAIVE reference, written here the way the public CamI2V code does it:
- mask: relative poses of all frame pairs, F = K^-T [t]x R K^-1, a dense float distance tensor
  (B, T, T, hw, hw) of every key cell centre to every query cell's line, thresholded at half a
  cell's diagonal;
- attention: the bool mask padded with the register columns and turned into a float additive bias
  (B, 1, L, R + L), then explicit float attention softmax(q k^T / sqrt(d) + bias) v. Heads are looped
  one at a time so the reference fits in this machine's memory (all heads at once needs
  ``heads`` times the score memory); this favours the reference's peak memory, not ours.
Ours: ``camvid.geometry.epipolar_mask`` / ``epipolar_neighbors`` / ``epipolar_runs`` for masks and the modules of
``camvid.attention`` (dense: one SDPA call with a (B, 1, L, R + L) bool mask; sparse: block-sparse
band gather). "equal outputs" is checked: the max abs difference to the naive output is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

SIZES = {"256x256": (256, 256), "512x320": (320, 512)}  # name -> (H, W)


# ------------------------------------------------------------------------------------ memory probe
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn, repeat: int) -> tuple[float, int, object]:
    """Best wall time over ``repeat`` calls and the peak extra resident memory of the first call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    t0 = time.perf_counter()
    result = fn()
    best = time.perf_counter() - t0
    peak = _status("VmHWM") - before
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best, peak, result


# ------------------------------------------------------------------------------------ inputs
def cameras(T: int, image_hw: tuple[int, int], seed: int = 0):
    """A RealEstate10K-like clip: forward/sideways translation with a slow yaw, as in the test set."""
    g = torch.Generator().manual_seed(seed)
    H, W = image_hw
    K = torch.tensor([[0.9 * W, 0.0, W / 2], [0.0, 0.9 * W, H / 2], [0.0, 0.0, 1.0]]).expand(1, T, 3, 3).contiguous()
    c2w = torch.eye(4).repeat(1, T, 1, 1)
    d = torch.randn(3, generator=g)
    d = d / d.norm()
    yaw = (float(torch.rand(1, generator=g)) - 0.5) * 0.6
    for t in range(T):
        a = yaw * t / T
        c2w[0, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        c2w[0, t, :3, 3] = d * 0.1 * t
    return K, c2w


def naive_mask(K, c2w, image_hw, feat_hw):
    """CamI2V's get_epipolar_mask: a dense float distance tensor, then a threshold."""
    H, W = image_hw
    h, w = feat_hw
    ds_y, ds_x = H / h, W / w
    rel = torch.linalg.inv(c2w)[:, None] @ c2w[:, :, None]  # (B, T1, T2, 4, 4): camera T1 -> camera T2
    R, t = rel[..., :3, :3], rel[..., :3, 3:4]
    E = torch.cross(t.expand_as(R), R, dim=-2)
    F = torch.linalg.inv(K)[:, None].transpose(-1, -2) @ E @ torch.linalg.inv(K)[:, :, None]
    ys = (torch.arange(h) + 0.5) * ds_y
    xs = (torch.arange(w) + 0.5) * ds_x
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(-1, 3)
    lines = F @ grid.T  # (B, T1, T2, 3, hw)
    lines = lines / lines[..., :2, :].norm(dim=-2, keepdim=True)
    dist = (lines.transpose(-1, -2) @ grid.T).abs()  # (B, T1, T2, hw, hw) float
    mask = dist <= math.hypot(ds_x, ds_y) / 2
    return mask.permute(0, 1, 3, 2, 4).reshape(K.shape[0], T_of(K) * h * w, T_of(K) * h * w)


def T_of(K):
    return K.shape[1]


def naive_attention(x, attn, mask):
    """CamI2V's EpipolarCrossAttention with the mask as a float bias, heads one at a time."""
    B, L, C = x.shape
    H, D, R = attn.heads, attn.dim_head, attn.num_register_tokens
    context = torch.cat([attn.register_tokens.expand(B, -1, -1), x], 1) if R else x
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    bias = torch.zeros(B, 1, L, R + L).masked_fill(~torch.nn.functional.pad(mask, (R, 0), value=True)[:, None],
                                                   float("-inf"))
    outs = []
    for i in range(H):
        sl = slice(i * D, (i + 1) * D)
        s = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(D) + bias[:, 0]
        outs.append(torch.softmax(s, -1) @ v[..., sl])
    return attn.to_out(torch.cat(outs, -1))


# ------------------------------------------------------------------------------------ one case
def run_case(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    from camvid.attention import AttentionContext, build_cross_frame_attention
    from camvid.geometry import epipolar as geo

    H, W = spec["image_hw"]
    h, w = spec["feat_hw"]
    T, C, heads = spec["frames"], spec["dim"], spec["heads"]
    K, c2w = cameras(T, (H, W))
    what, rep = spec["what"], spec["repeat"]
    out: dict = {}
    if what == "mask_naive":
        t, mem, m = measure(lambda: naive_mask(K, c2w, (H, W), (h, w)), rep)
        ours = geo.epipolar_mask(K, c2w, (H, W), (h, w)).reshape(m.shape)
        out = {"time": t, "mem": mem, "density": m.float().mean().item(),
               "agree": (m == ours).float().mean().item()}
    elif what == "mask_dense":
        t, mem, m = measure(lambda: geo.epipolar_mask(K, c2w, (H, W), (h, w)), rep)
        out = {"time": t, "mem": mem, "density": m.float().mean().item()}
    elif what == "mask_sparse":
        t, mem, _ = measure(lambda: geo.epipolar_neighbors(K, c2w, (H, W), (h, w)), rep)
        out = {"time": t, "mem": mem}
    elif what == "mask_runs":
        t, mem, r = measure(lambda: geo.epipolar_runs(K, c2w, (H, W), (h, w)), rep)
        size = sum(x.numel() * x.element_size() for x in (r.start, r.end))
        out = {"time": t, "mem": mem, "note": f"output {size / 2**20:.0f} MiB ({r.start.dtype} start/end)"}
    else:  # attention: variant:path or naive, fwd or fwdbwd
        variant, path, mode = spec["variant"], spec["path"], spec["mode"]
        views = 2 if variant == "cross_video" else 1
        B = views
        Kb, c2wb = (K.repeat(B, 1, 1, 1), c2w.repeat(B, 1, 1, 1)) if B > 1 else (K, c2w)
        if B > 1:
            c2wb[1, :, :3, 3] += torch.tensor([0.2, 0.0, 0.0])  # the partner video is shifted sideways
        kw = {"norm_num_groups": 32} if variant == "cross_video" else {}
        module = build_cross_frame_attention("epipolar" if variant == "naive" else variant, C, heads, **kw)
        with torch.no_grad():  # non-zero outputs so "equal outputs" means something
            for p in module.parameters():
                if not p.any():
                    p.normal_(0, 0.02)
        x = torch.randn(B, T, h * w, C, requires_grad=(mode == "fwdbwd"))
        ctx = AttentionContext(K=Kb, c2w=c2wb, image_hw=(H, W), cond_index=torch.zeros(B, dtype=torch.long),
                               num_views=views, path=path if path != "naive" else "dense")
        # Masks are built before timing (attention cost only), in the form each path reads: the dense
        # bool mask for the naive reference, the row runs for our epipolar kinds (the dense path
        # expands them chunk by chunk, the sparse plan lists them), the dense band for cross_video.
        if variant == "naive":
            mask = ctx.mask("all", (h, w))
        elif variant in ("epipolar", "epipolar_ref"):
            ctx.runs("all" if variant == "epipolar" else "ref", (h, w))
        elif variant == "cross_video":
            ctx.mask("cross", (h, w))
        if path == "sparse":
            kind = {"epipolar": "all", "epipolar_ref": "ref", "cross_video": "cross"}[variant]
            t0 = time.perf_counter()
            ctx.tile_plan(kind, (h, w))
            out["plan_time"] = time.perf_counter() - t0

        if variant == "naive":
            def call():
                return naive_attention(x.reshape(1, T * h * w, C), module.epipolar_attn, mask).view_as(x)
        else:
            def call():
                return module(x, ctx, (h, w))

        def step():
            if mode == "fwd":
                with torch.no_grad():
                    return call()
            y = call()
            y.square().mean().backward()
            return y.detach()

        t, mem, y = measure(step, rep)
        out.update({"time": t, "mem": mem})
        if variant in ("naive", "epipolar") and spec.get("compare"):
            torch.save(y, spec["compare"] + f".{variant}.{path}.pt")
    return out


# ------------------------------------------------------------------------------------ driver
def child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f}s"}
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:120]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def levels(image_hw, n):
    h, w = image_hw[0] // 8, image_hw[1] // 8
    return [(h >> i, w >> i) for i in range(n)]


def fmt_mem(b):
    return f"{b / 2**20:8.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI size: 256x256, 8 frames, 16x16 level and below")
    ap.add_argument("--sizes", nargs="*", default=None, choices=list(SIZES))
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--dim", type=int, default=320, help="channels (DynamiCrafter level 0: 320, 5 heads)")
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-cost", type=float, default=4e11,
                    help="skip attention cases whose dense score work (L*Lk*C*4 flops) exceeds this")
    ap.add_argument("--max-naive-bytes", type=float, default=8e9, help="skip naive cases whose tensors exceed this")
    ap.add_argument("--parts", nargs="*", default=["masks", "attention"], choices=["masks", "attention"],
                    help="measure mask building, attention, or both")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    sizes = args.sizes or (["256x256"] if args.quick else list(SIZES))
    T = args.frames or (8 if args.quick else 16)
    print(f"# command: python benchmarks/attention.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# torch {torch.__version__}, {args.threads} threads, T={T}, C={args.dim}, heads={args.heads}, B=1 "
          f"(cross_video: one pair, B=2); time = best of {args.repeat}; memory = peak extra RSS of a fresh child")
    for size in sizes:
        image_hw = SIZES[size]
        lv = levels(image_hw, 4)
        if args.quick:
            lv = lv[1:]
        for feat_hw in lv:
            hw = feat_hw[0] * feat_hw[1]
            L = T * hw
            base = {"image_hw": image_hw, "feat_hw": feat_hw, "frames": T, "dim": args.dim, "heads": args.heads,
                    "threads": args.threads, "repeat": args.repeat}
            print(f"\n## {size} level {feat_hw[0]}x{feat_hw[1]} (L = {L} tokens)")
            if "masks" in args.parts:
                mask_table(base, T, hw, args)
            if "attention" in args.parts:
                attention_table(base, L, size, feat_hw, args)
            sys.stdout.flush()


def mask_table(base: dict, T: int, hw: int, args) -> None:
    res = {}
    naive_bytes = 2 * T * T * hw * hw * 4  # the float distances and their abs() coexist
    for what in ("mask_naive", "mask_dense", "mask_sparse", "mask_runs"):
        if what == "mask_naive" and naive_bytes > args.max_naive_bytes:
            res[what] = {"error": f"skipped: float distances need {naive_bytes / 1e9:.1f} GB > --max-naive-bytes"}
        else:
            res[what] = child({**base, "what": what}, args.timeout)
    print("| mask build | time (s) | peak extra RSS | vs naive time | vs naive memory | note |")
    print("|---|---|---|---|---|---|")
    nv = res["mask_naive"]
    for what, label in (("mask_naive", "naive (CamI2V float distances)"),
                        ("mask_dense", "ours dense epipolar_mask"),
                        ("mask_sparse", "ours epipolar_neighbors"),
                        ("mask_runs", "ours epipolar_runs (compact)")):
        r = res[what]
        if "error" in r:
            print(f"| {label} | - | - | - | - | {r['error']} |")
            continue
        ratio_t = f"{nv['time'] / r['time']:.1f}x" if "time" in nv else "-"
        ratio_m = f"{nv['mem'] / max(r['mem'], 1):.1f}x" if "mem" in nv else "-"
        note = f"density {r['density']:.3f}" if "density" in r else r.get("note", "")
        if "agree" in r:
            note += f", agrees with ours on {100 * r['agree']:.3f}% of entries"
        print(f"| {label} | {r['time']:.3f} | {fmt_mem(r['mem'])} | {ratio_t} | {ratio_m} | {note} |")



def attention_table(base: dict, L: int, size: str, feat_hw, args) -> None:
    cost = L * (L + 4) * args.dim * 4
    print("\n| attention | mode | time (s) | peak extra RSS | vs naive time | vs naive memory | note |")
    print("|---|---|---|---|---|---|---|")
    cases = [("naive", "naive"), ("epipolar", "dense"), ("epipolar", "sparse"), ("epipolar_ref", "dense"),
             ("epipolar_ref", "sparse"), ("cross_video", "dense"), ("cross_video", "sparse"),
             ("temporal", "dense"), ("full3d", "dense")]
    compare = f"/tmp/camvid_bench_{os.getpid()}_{size}_{feat_hw[0]}x{feat_hw[1]}"
    for mode in ("fwd", "fwdbwd"):
        rows = {}
        for variant, path in cases:
            heavy = variant in ("naive", "full3d") or (variant == "epipolar" and path == "dense")
            if heavy and cost > args.max_cost:
                rows[(variant, path)] = {"error": f"skipped: {cost / 1e9:.0f} GFLOP dense scores > --max-cost"}
                continue
            if variant == "naive" and (L * (L + 4) * 4 * 3 > args.max_naive_bytes
                                       or (mode == "fwdbwd" and L * (L + 4) * 4 * (args.heads + 3)
                                           > args.max_naive_bytes)):
                rows[(variant, path)] = {"error": "skipped: naive float scores exceed --max-naive-bytes"}
                continue
            spec = {**base, "what": "attention", "variant": variant, "path": path, "mode": mode,
                    "compare": compare if mode == "fwd" else None}
            rows[(variant, path)] = child(spec, args.timeout)
        nv = rows[("naive", "naive")]
        diff = ""
        if mode == "fwd" and os.path.exists(compare + ".naive.naive.pt"):
            ref = torch.load(compare + ".naive.naive.pt")
            for p in ("dense", "sparse"):
                f = compare + f".epipolar.{p}.pt"
                if os.path.exists(f):
                    diff += f" {p}: max|diff| {(torch.load(f) - ref).abs().max().item():.1e};"
                    os.remove(f)
            os.remove(compare + ".naive.naive.pt")
        for (variant, path), r in rows.items():
            label = "naive (CamI2V)" if variant == "naive" else f"{variant} [{path}]"
            if "error" in r:
                print(f"| {label} | {mode} | - | - | - | - | {r['error']} |")
                continue
            same = variant in ("epipolar",) and "time" in nv
            ratio_t = f"{nv['time'] / r['time']:.1f}x" if same else "-"
            ratio_m = f"{nv['mem'] / max(r['mem'], 1):.1f}x" if same else "-"
            note = f"plan {r['plan_time']:.2f}s (once per forward)" if "plan_time" in r else ""
            if variant == "epipolar" and diff and mode == "fwd":
                note += (";" if note else "") + " vs naive" + diff
            print(f"| {label} | {mode} | {r['time']:.3f} | {fmt_mem(r['mem'])} | {ratio_t} | {ratio_m} | {note} |")


if __name__ == "__main__":
    main()
