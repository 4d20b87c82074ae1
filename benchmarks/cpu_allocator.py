"""What keeping freed memory (camvid.allocator, chosen by the entry points) does to a CPU step: time, page
faults and resident memory, against glibc's defaults (``CAMVID_CPU_ALLOCATOR=system``).

Each (workload, setting) runs in a fresh child process that applies the setting as the entry points do
(``camvid.allocator.choose_cpu_allocator`` under ``CAMVID_CPU_ALLOCATOR``, before torch loads), runs one
untimed warm-up step and then ``--steps`` timed ones. The settings alternate within each round, and
every figure is reported for each, with the ratio setting / system of the same round (median over
rounds).

    python benchmarks/cpu_allocator.py                       # every workload, 3 rounds
    python benchmarks/cpu_allocator.py --workloads demo --rounds 2

Workloads (2 threads unless ``--threads``):
- ``demo``: the demo's training step (tiny CamI2V, batch 4, 8 frames at 32x32, AdamW).
- ``epipolar`` / ``cross_video``: the attention module of that variant at the 32x32 level of a
  256x256, 16-frame clip (C = 320, 5 heads; ``cross_video``: two videos), the block-sparse CPU path;
  ``--modes``: forward alone without gradients (``fwd``, as sampling runs it) and forward+backward
  (``fwdbwd``, as a training step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = ("demo", "epipolar", "cross_video")
SETTINGS = ("system", "reuse")


def _demo_step():
    from cpu_threads import training_step  # benchmarks/cpu_threads.py: the tiny CamI2V's step

    return training_step(frames=8, size=32, batch=4)


def _attention_step(variant: str, mode: str):
    import torch
    from attention import cameras, randomize_zero_parameters, view_cameras  # benchmarks/attention.py

    from camvid.attention import AttentionContext, build_cross_frame_attention

    (H, W), (h, w), T, C, heads = (256, 256), (32, 32), 16, 320, 5
    cross = variant == "cross_video"
    B = 2 if cross else 1
    K, c2w = view_cameras(*cameras(T, (H, W)), B)  # a RealEstate10K-like clip; cross_video: two videos
    module = randomize_zero_parameters(
        build_cross_frame_attention(variant, C, heads, **({"norm_num_groups": 32} if cross else {})))
    x = torch.randn(B, T, h * w, C, requires_grad=mode == "fwdbwd")

    def step():
        ctx = AttentionContext(K=K, c2w=c2w, image_hw=(H, W), cond_index=torch.zeros(B, dtype=torch.long),
                               num_views=B, path="sparse")
        if mode == "fwd":  # as sampling runs it
            with torch.no_grad():
                module(x, ctx, (h, w))
            return
        x.grad = None
        module(x, ctx, (h, w)).square().mean().backward()
    return step


def child(workload: str, mode: str, steps: int, threads: int) -> dict:
    import resource

    from camvid.allocator import choose_cpu_allocator

    applied = choose_cpu_allocator("train")  # as the entry points do, under CAMVID_CPU_ALLOCATOR, before torch loads
    import torch
    from attention import _status  # benchmarks/attention.py: a field of /proc/self/status, in bytes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    step = _demo_step() if workload == "demo" else _attention_step(workload, mode)
    step()  # warm-up: first-use costs (plans, lazy buffers) are not timed
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    for _ in range(steps):
        step()
    wall = (time.perf_counter() - w0) / steps
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"applied": applied != "system", "wall": wall, "user": (u1.ru_utime - u0.ru_utime) / steps,
            "sys": (u1.ru_stime - u0.ru_stime) / steps, "faults": (u1.ru_minflt - u0.ru_minflt) / steps,
            "peak_rss": _status("VmHWM"), "rss_after": _status("VmRSS")}


def run_child(workload: str, mode: str, setting: str, steps: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "benchmarks")]),
               CAMVID_CPU_ALLOCATOR=setting, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", workload, "--mode", mode, "--steps", str(steps),
                          "--threads", str(threads)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{workload} {mode} / {setting} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per child (after one warm-up step)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="*", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"],
                   help="attention workloads: forward alone (no_grad, as sampling) and/or forward+backward")
    p.add_argument("--mode", default="fwdbwd", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mode, args.steps, args.threads)))
        return
    print(f"# command: python benchmarks/cpu_allocator.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.threads} threads, "
          f"{args.steps} timed steps per child after one warm-up, {args.rounds} rounds, settings alternating")
    print("\n| workload | mode | setting | wall s/step | user s/step | sys s/step | page faults/step | peak RSS (MiB) | "
          "RSS after (MiB) | wall vs system |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cases = [(wl, m) for wl in args.workloads for m in (["fwdbwd"] if wl == "demo" else args.modes)]
    for workload, mode in cases:
        res = {s: [] for s in SETTINGS}
        for r in range(args.rounds):
            order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
            for s in order:
                res[s].append(run_child(workload, mode, s, args.steps, args.threads))
        for s in SETTINGS:
            rows = res[s]
            if s == "reuse" and not rows[0]["applied"]:
                print(f"| {workload} | {mode} | reuse | - | - | - | - | - | - | not applied: this C library is not glibc |")
                continue

            def med(key, rows=rows):
                return statistics.median(x[key] for x in rows)
            ratio = statistics.median(a["wall"] / b["wall"] for a, b in zip(rows, res["system"]))
            print(f"| {workload} | {mode} | {s} | {med('wall'):.3f} | {med('user'):.3f} | {med('sys'):.3f} | "
                  f"{med('faults'):.0f} | {med('peak_rss') / 2**20:.0f} | {med('rss_after') / 2**20:.0f} | "
                  f"{ratio:.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
