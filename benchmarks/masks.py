"""Time and peak memory of the epipolar mask builders against a naive dense reference.

Every case runs in a fresh Python process (so peak RSS is its own), after a tiny warm-up call;
the table prints wall seconds, process CPU seconds (summed over threads; steadier than wall time
on a shared machine), peak RSS increase over the process before the call, the output size and
ratios (wall time, peak) against the naive reference measured in the same run, level and threads.

The naive reference is what the public CamI2V code does: a dense float32 distance tensor
(B, T, T, hw, hw) from every query line to every key cell, then a threshold.

    .venv/bin/python benchmarks/masks.py                       # 256x256, T=16, level 32, threads 1 and 2
    .venv/bin/python benchmarks/masks.py --levels 32 64 --builders neighbors --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

BUILDERS = ("naive", "mask_all", "mask_ref", "neighbors", "neighbors_ref")


def _trajectory(T: int, image: int):
    """A forward-and-sideways dolly with a slow pan: lines of every direction, no coincident frames."""
    import torch

    f64 = torch.float64
    s = torch.linspace(0.0, 1.0, T, dtype=f64)
    yaw = 0.3 * s
    c2w = torch.eye(4, dtype=f64).repeat(1, T, 1, 1)
    c2w[0, :, 0, 0], c2w[0, :, 0, 2] = torch.cos(yaw), torch.sin(yaw)
    c2w[0, :, 2, 0], c2w[0, :, 2, 2] = -torch.sin(yaw), torch.cos(yaw)
    c2w[0, :, 0, 3], c2w[0, :, 1, 3], c2w[0, :, 2, 3] = 0.6 * s, 0.1 * s, 1.0 * s
    K = torch.tensor([[0.9 * image, 0, image / 2], [0, 0.9 * image, image / 2], [0, 0, 1]], dtype=f64)
    return K.repeat(1, T, 1, 1), c2w


def _naive(K, c2w, image_hw, feat_hw, threshold):
    import torch

    from camvid.geometry import feature_cell_centers, fundamental_matrices

    F = fundamental_matrices(K, c2w).float()  # (B, T, T, 3, 3)
    x = feature_cell_centers(image_hw, feat_hw).float()
    x = torch.cat([x, torch.ones_like(x[:, :1])], -1)  # (hw, 3)
    lines = x @ F.transpose(-1, -2)  # (B, T, T, hw, 3)
    dist = (lines @ x.T).abs() / lines[..., :2].norm(dim=-1, keepdim=True)  # (B, T, T, hw, hw)
    return dist <= threshold


def _build(name: str, K, c2w, image_hw, feat_hw):
    from camvid.geometry import default_threshold, epipolar_mask, epipolar_neighbors

    if name == "naive":
        return (_naive(K, c2w, image_hw, feat_hw, default_threshold(image_hw, feat_hw)),)
    if name in ("mask_all", "mask_ref"):
        return (epipolar_mask(K, c2w, image_hw, feat_hw, mode=name[5:]),)
    mode = "ref" if name == "neighbors_ref" else "all"
    return epipolar_neighbors(K, c2w, image_hw, feat_hw, mode=mode)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(name: str, image: int, frames: int, level: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    K, c2w = _trajectory(frames, image)
    _build(name, K[:, :2], c2w[:, :2], (image, image), (4, 4))  # warm-up: first-call costs
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak-RSS watermark (VmHWM) to the current RSS
    before = _rss_kib("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    out = _build(name, K, c2w, (image, image), (level, level))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _rss_kib("VmHWM") - before
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_mib": peak / 1024,
        "out_mib": sum(t.numel() * t.element_size() for t in out) / 2**20,
        "kmax": out[0].shape[-1] if len(out) == 2 else None,
    }


def run_case(name: str, image: int, frames: int, level: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, str(image), str(frames), str(level), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {name} level {level} threads {threads} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=int, default=256, help="square image size in pixels")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--levels", type=int, nargs="+", default=[32], help="feature map sizes")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--builders", nargs="+", default=list(BUILDERS), choices=BUILDERS)
    parser.add_argument("--child", nargs=5, metavar=("BUILDER", "IMAGE", "FRAMES", "LEVEL", "THREADS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, *sizes = args.child
        print(json.dumps(child(name, *(int(v) for v in sizes))))
        return
    print(f"image {args.image}x{args.image}, T={args.frames}, one clip; ratios are naive / builder")
    print(f"{'builder':<14}{'level':>6}{'thr':>4}{'time s':>9}{'cpu s':>8}{'peak MiB':>10}{'out MiB':>9}"
          f"{'Kmax':>6}{'x time':>8}{'x peak':>8}")
    for level in args.levels:
        for threads in args.threads:
            naive = None
            for name in args.builders:
                r = run_case(name, args.image, args.frames, level, threads)
                if name == "naive":
                    naive = r
                speed = f"{naive['seconds'] / r['seconds']:8.1f}" if naive else f"{'-':>8}"
                memory = f"{naive['peak_mib'] / max(r['peak_mib'], 1e-9):8.1f}" if naive else f"{'-':>8}"
                kmax = "-" if r["kmax"] is None else str(r["kmax"])
                print(f"{name:<14}{level:>6}{threads:>4}{r['seconds']:9.3f}{r['cpu_seconds']:8.3f}{r['peak_mib']:10.1f}"
                      f"{r['out_mib']:9.1f}{kmax:>6}{speed}{memory}", flush=True)


if __name__ == "__main__":
    main()
