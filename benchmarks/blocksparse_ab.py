"""The block-sparse kernel of the working tree against the same file at a git revision, in one process.

    python benchmarks/blocksparse_ab.py REV [--kinds ref cross all] [--modes fwd fwdbwd] [--repeat 15]
        e.g. python benchmarks/blocksparse_ab.py HEAD~1 --kinds ref cross

Loads ``src/camvid/attention/blocksparse.py`` as it is at REV (``git show``) beside the working tree's, and
times both on the same plan and inputs at the 256x256 model's 32x32 level (16 frames, 5 heads of 64; ``cross``
is one pair of videos), alternating them round by round so that load from other programs hits both alike.
Prints the medians, their ratio (working tree / REV) and the largest difference of outputs (forward) or
query gradients (forward+backward) between the two. Separate runs of ``benchmarks/attention.py`` on a shared
host differ by more than a kernel change does; this comparison does not.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
KERNEL = "src/camvid/attention/blocksparse.py"


def kernel_at(rev: str):
    text = subprocess.run(["git", "show", f"{rev}:{KERNEL}"], cwd=REPO, capture_output=True, text=True)
    if text.returncode != 0:
        raise SystemExit(f"git show {rev}:{KERNEL}: {text.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / "blocksparse_at_rev.py"
    path.write_text(text.stdout)
    spec = importlib.util.spec_from_file_location("blocksparse_at_rev", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def plan_for(kind: str):
    from attention import cameras, view_cameras

    from camvid.attention import AttentionContext

    views = 2 if kind == "cross" else 1
    Kb, c2wb = view_cameras(*cameras(16, (256, 256)), views)
    ctx = AttentionContext(K=Kb, c2w=c2wb, image_hw=(256, 256), cond_index=torch.zeros(views, dtype=torch.long),
                           num_views=views, path="sparse")
    return ctx.tile_plan(kind, (32, 32))


def main(argv: list[str] | None = None) -> list[str]:
    from camvid.attention import blocksparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev")
    p.add_argument("--kinds", nargs="+", default=["ref", "cross"], choices=["ref", "cross", "all"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args(argv)
    old = kernel_at(args.rev)
    lines = [f"# torch {torch.__version__}, {torch.get_num_threads()} threads; working tree against {args.rev}"]
    for kind in args.kinds:
        plan = plan_for(kind)
        R = 4 if kind == "all" else 0  # CamI2V's registers ride with "all"
        g = torch.Generator().manual_seed(0)
        q = torch.randn(plan.batch, plan.num_queries, 5, 64, generator=g)
        kv = torch.randn(plan.batch, R + plan.num_keys, 2, 5, 64, generator=g)
        for mode in args.modes:
            def run(mod, mode=mode, plan=plan, R=R, q=q, kv=kv):
                if mode == "fwd":
                    with torch.no_grad():
                        return mod.block_sparse_attention_packed(q, kv, plan, R)
                qq = q.clone().requires_grad_()
                mod.block_sparse_attention_packed(qq, kv.clone().requires_grad_(), plan, R).square().sum().backward()
                return qq.grad

            diff = float((run(blocksparse) - run(old)).abs().max())
            times = {"tree": [], "rev": []}
            for _ in range(args.repeat if mode == "fwd" else max(3, args.repeat // 2)):
                for name, mod in (("rev", old), ("tree", blocksparse)):
                    t = time.perf_counter()
                    run(mod)
                    times[name].append(time.perf_counter() - t)
            tree, rev = (statistics.median(times[k]) * 1e3 for k in ("tree", "rev"))
            lines.append(f"{kind:5s} {mode:6s} {args.rev}: {rev:7.1f} ms  tree: {tree:7.1f} ms  tree/rev {tree / rev:.3f}"
                         f"  max |diff| {diff:.1e}")
            print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
