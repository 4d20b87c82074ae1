"""Training-step cost of the tiny CamI2V under different OpenMP thread settings, on this machine now.

Each setting runs in a fresh child process (OpenMP reads its environment once, at load): a few
training steps of the tiny CamI2V (x0, first frame replaced, epipolar attention), reporting CPU
seconds and wall seconds per step. The settings run interleaved, round after round, and everything is
reported as a ratio to the single-thread reference of the same round, so a load that changes during
the run affects both sides of each ratio alike.

    python benchmarks/cpu_threads.py                 # 3 rounds, 8 frames at 64x64
    python benchmarks/cpu_threads.py --rounds 2 --frames 8 --size 32 --batch 4             # the demo's step
    python benchmarks/cpu_threads.py --rounds 2 --frames 8 --size 32 --batch 4 --load 2    # 2 busy jobs beside

What to look for on a loaded host (more runnable threads than cores): with the default OpenMP wait
policy, 2 threads burn many times the CPU of 1 thread for the same step (waiting threads spin), and
the wall time explodes; with OMP_WAIT_POLICY=PASSIVE the CPU per step stays close to 1 thread's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads, default wait (spin)": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
}
# a competing job for --load: one busy thread that never sleeps
HOG = "while True:\n    pass\n"


def spin_setting(spins: int) -> dict:
    """2 threads, libgomp spinning ``spins`` iterations before it sleeps (--spins)."""
    return {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": str(spins)}


def training_step(frames: int, size: int, batch: int):
    """The tiny CamI2V's training step (x0, first frame replaced, epipolar attention, fused AdamW) on a
    random clip of ``batch`` x ``frames`` at ``size`` x ``size``: a function running one step."""
    import torch

    from camvid.diffusion.losses import diffusion_loss
    from camvid.models.dynamicrafter import build_dynamicrafter_method

    torch.manual_seed(0)
    K = torch.tensor([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1.0]])
    c2w = torch.eye(4).expand(1, frames, 4, 4).clone()
    c2w[0, :, 0, 3] = torch.linspace(0, 0.5, frames)
    data = {"video": torch.rand(batch, frames, 3, size, size) * 2 - 1, "K": K.expand(batch, frames, 3, 3).clone(),
            "c2w": c2w.expand(batch, -1, -1, -1).clone(), "cond_index": torch.zeros(batch, dtype=torch.long),
            "frame_stride": torch.ones(batch, dtype=torch.long), "caption": ["a room"] * batch, "num_views": 1}
    m = build_dynamicrafter_method("cami2v", "tiny", num_frames=frames, image_hw=(size, size),
                                   parameterization="x0", first_frame="replace")
    m.requires_grad_(True)
    for e in m.encoder_modules():
        e.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-3, fused=True)

    def step():
        out = diffusion_loss(m, data, cond_dropout={"uncond_prob": 0.05})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return step


# the child process: OpenMP reads its environment once, at load, so each setting needs a fresh one
CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[5])
from cpu_threads import training_step
frames, size, steps, batch = (int(a) for a in sys.argv[1:5])
step = training_step(frames, size, batch)
step()  # warm-up
c0, w0 = time.process_time(), time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"cpu": (time.process_time() - c0) / steps, "wall": (time.perf_counter() - w0) / steps,
                  "threads": torch.get_num_threads()}))
"""


def run_child(setting: dict, frames: int, size: int, steps: int, batch: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    for k, v in setting.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    out = subprocess.run([sys.executable, "-c", CHILD, str(frames), str(size), str(steps), str(batch),
                          str(REPO / "benchmarks")], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per child (after one warm-up step)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--spins", type=int, nargs="*", default=[1000, 30000],
                   help="also 2 threads with these GOMP_SPINCOUNT values (libgomp's default is 300000)")
    p.add_argument("--load", type=int, default=0,
                   help="start this many competing busy processes for the run (a loaded host, reproducibly)")
    args = p.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.load)]
    try:
        measure(args)
    finally:
        for h in hogs:
            h.kill()


def measure(args) -> None:
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}, {args.load} competing busy processes; tiny CamI2V, "
          f"batch {args.batch}, {args.frames} frames at {args.size}x{args.size}, {args.steps} steps per child, "
          f"{args.rounds} rounds")
    settings = {**SETTINGS, **{f"2 threads, GOMP_SPINCOUNT={n}": spin_setting(n) for n in args.spins}}
    ratios: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    ref_walls: list[dict] = []
    for r in range(args.rounds):
        results = {name: run_child(s, args.frames, args.size, args.steps, args.batch) for name, s in settings.items()}
        ref = results["1 thread"]
        ref_walls.append(ref)
        for name, res in results.items():
            ratios[name].append((res["cpu"] / ref["cpu"], res["wall"] / ref["wall"]))
            print(f"  round {r}: {name:<36} cpu {res['cpu']:.2f} s/step  wall {res['wall']:.2f} s/step")
    print(f"\nratio to 1 thread, median of {args.rounds} rounds (CPU seconds per step, wall seconds per step):")
    for name, rs in ratios.items():
        cpu = sorted(x for x, _ in rs)[len(rs) // 2]
        wall = sorted(y for _, y in rs)[len(rs) // 2]
        print(f"  {name:<36} cpu x{cpu:.2f}  wall x{wall:.2f}")
    print(f"(1 thread: {sorted(r['wall'] for r in ref_walls)[len(ref_walls) // 2]:.2f} s/step wall, median)")


if __name__ == "__main__":
    main()
