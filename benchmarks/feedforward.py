"""The feed-forward's gate (``camvid.layers.gated_gelu``) against the three PyTorch ops it replaces.

    python benchmarks/feedforward.py                 # 32x32 level of a 16-frame pair: 32768 tokens, C = 320
    python benchmarks/feedforward.py --tokens 4096 --dim 640 --repeat 9

Both variants run the same ``FeedForward`` weights and inputs (``net.0.proj``, the gate, ``net.2``),
forward+backward as a training step does (loss = mean of squares), round-robin ``--repeat`` times in
one process after one untimed round each; reported: the median wall time, system time and page faults
of a step, and the memory autograd keeps between the forward and backward passes (saved tensors, by
``torch.autograd.graph.saved_tensors_hooks``), with the ratio fused / three ops. The CPU allocator is
glibc's, as ``src/train.py`` runs (``camvid.allocator``), unless ``--allocator reuse``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def three_ops(proj):
    """The gate as lvdm and diffusers write it."""
    import torch.nn.functional as F

    h, gate = proj.chunk(2, dim=-1)
    return h * F.gelu(gate)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``fn`` runs (distinct storages)."""
    import torch

    seen: dict = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2 * 16 * 32 * 32, help="rows (default: a 16-frame pair at 32x32)")
    ap.add_argument("--dim", type=int, default=320)
    ap.add_argument("--mult", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--allocator", default="system", choices=["system", "reuse"])
    args = ap.parse_args(argv)
    if min(args.tokens, args.dim, args.mult, args.threads, args.repeat) < 1:
        ap.error("--tokens, --dim, --mult, --threads and --repeat must be positive")
    if args.allocator == "reuse":
        from camvid.allocator import reuse_freed_memory

        reuse_freed_memory()
    import torch

    from camvid import layers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ff = layers.FeedForward(args.dim, args.mult)
    x = torch.randn(args.tokens, args.dim, requires_grad=True)
    gates = {"three ops": three_ops, "gated_gelu": layers.gated_gelu}

    def forward(gate):
        return ff.net[2](gate(ff.net[0].proj(x)))

    def step(gate):
        x.grad = None
        ff.zero_grad(set_to_none=True)
        forward(gate).square().mean().backward()
        return x.grad

    ref = step(three_ops).clone()
    diff = float((step(layers.gated_gelu) - ref).abs().max())
    times = {k: [] for k in gates}
    for _ in range(args.repeat):
        for name, gate in gates.items():
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            step(gate)
            wall = time.perf_counter() - t0
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            times[name].append((wall, u1.ru_stime - u0.ru_stime, u1.ru_minflt - u0.ru_minflt))
    rows = []
    for name, gate in gates.items():
        rows.append({"gate": name, "wall": statistics.median(t[0] for t in times[name]),
                     "sys": statistics.median(t[1] for t in times[name]),
                     "faults": statistics.median(t[2] for t in times[name]),
                     "saved": saved_bytes(lambda gate=gate: forward(gate))})
    base = rows[0]
    print(f"# command: python benchmarks/feedforward.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"# torch {torch.__version__}, {args.threads} threads, {args.tokens} tokens, C = {args.dim}, inner = "
          f"{args.dim * args.mult}, allocator {args.allocator}; median of {args.repeat} round-robin steps "
          f"(forward+backward); max |input gradient difference| {diff:.1e}")
    print("\n| gate | wall s/step | sys s/step | page faults/step | saved for backward (MiB) | wall vs three ops | "
          "saved vs three ops |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gate']} | {r['wall']:.3f} | {r['sys']:.3f} | {r['faults']:.0f} | {r['saved'] / 2**20:.0f} | "
              f"{r['wall'] / base['wall']:.2f} | {r['saved'] / base['saved']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
