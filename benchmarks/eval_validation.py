"""Known-camera validation of the camera-accuracy pipeline, and its speed.

Synthetic rooms are rendered along known trajectories (camvid.data.synthetic), written with the
sample layout (H.264 mp4, as generated videos are), and scored by the CamI2V protocol:

- ``gt``: the rendered video itself -> near-zero RotErr / TransErr (the "Reference" row);
- ``shuffled``: frames in a random order, ``frozen``: frame 0 repeated -> large errors / failures;
- ``blur<s>`` (Gaussian, sigma s px) and ``noise<s>`` (Gaussian, sigma s grey levels) -> graceful
  degradation.

Then the speed: seconds per 16-frame video (feature extraction + one trial, and the full trials),
and wall time over several videos with 1..N worker processes.

    .venv/bin/python benchmarks/eval_validation.py                  # the numbers in docs/evaluation.md
    .venv/bin/python benchmarks/eval_validation.py --size 128 --frames 8 --trials 1 --kinds forward
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from camvid.data.synthetic import default_intrinsics, make_scene, make_trajectory, render_frames
from camvid.evaluation.camera_accuracy import CameraAccuracyConfig, VideoJob, evaluate_camera_accuracy
from camvid.evaluation.layout import read_samples, read_video, write_sample
from camvid.evaluation.sfm import SfmOptions, run_sfm


def degrade(video: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    if condition == "gt":
        return video
    if condition == "shuffled":
        return video[rng.permutation(len(video))]
    if condition == "frozen":
        return np.repeat(video[:1], len(video), axis=0)
    if condition.startswith("blur"):
        sigma = float(condition[4:])
        return np.stack([gaussian_filter(f.astype(np.float32), (sigma, sigma, 0)) for f in video]).round().clip(
            0, 255).astype(np.uint8)
    if condition.startswith("noise"):
        sigma = float(condition[5:])
        return (video + rng.normal(0, sigma, video.shape)).round().clip(0, 255).astype(np.uint8)
    raise ValueError(f"unknown condition {condition!r}")


def build(root: Path, kinds: list[str], conditions: list[str], size: int, frames: int) -> None:
    K = default_intrinsics(size, size)
    for seed, kind in enumerate(kinds):
        c2w = make_trajectory(kind, frames, seed)
        video, _ = render_frames(make_scene(seed), K, c2w, size, size)
        rng = np.random.default_rng(seed)
        for cond in conditions:
            write_sample(root, f"{kind}_{cond}", degrade(video, cond, rng), K, c2w, f"{kind} {cond}", seed,
                         meta={"kind": kind, "condition": cond})


def validation_table(root: Path, conditions: list[str], trials: int, workers: int) -> tuple[str, dict]:
    records = read_samples(root)
    jobs = [VideoJob(r.sample_id, str(r.video_path), r.K[0], r.c2w) for r in records]
    config = CameraAccuracyConfig(trials=trials, workers=workers, cache_dir=str(root / "cache"))
    result = evaluate_camera_accuracy(jobs, config)
    by_cond: dict[str, list[dict]] = {c: [] for c in conditions}
    for rec, res in zip(records, result["per_video"]):
        by_cond[rec.meta["condition"]].append(res)
    lines = ["| condition | videos | trial success | RotErr (rad) | TransErr | CamMC | per-video RotErr |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for cond, vids in by_cond.items():
        ok = [v for v in vids if v["num_success"]]
        n_ok = sum(v["num_success"] for v in vids)
        n_all = sum(v["num_trials"] for v in vids)

        def mean(key, ok=ok):
            return float(np.mean([v[key] for v in ok])) if ok else None

        summary[cond] = {"trial_success": n_ok / n_all, "RotErr": mean("RotErr"), "TransErr": mean("TransErr"),
                         "CamMC": mean("CamMC")}
        per_video = ", ".join(f"{v['sample_id'].split('_')[0]} {v['RotErr']:.3f}" if v["RotErr"] is not None
                              else f"{v['sample_id'].split('_')[0]} failed" for v in vids)
        fmt = [("failed" if x is None else f"{x:.3f}") for x in
               (summary[cond]["RotErr"], summary[cond]["TransErr"], summary[cond]["CamMC"])]
        lines.append(f"| {cond} | {len(vids)} | {n_ok}/{n_all} | {fmt[0]} | {fmt[1]} | {fmt[2]} | {per_video} |")
    return "\n".join(lines), {"summary": summary, "per_video": result["per_video"]}


def speed(root: Path, trials: int, max_workers: int) -> tuple[str, dict]:
    gt = [r for r in read_samples(root) if r.meta["condition"] == "gt"]
    video = read_video(gt[0].video_path)
    t0 = time.perf_counter()
    run_sfm(video, gt[0].K[0], [0], SfmOptions())
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_sfm(video, gt[0].K[0], list(range(trials)), SfmOptions())
    full = time.perf_counter() - t0
    lines = [f"- one video ({len(video)} frames, {video.shape[2]}x{video.shape[1]}): extraction + 1 trial "
             f"{one:.1f} s; extraction + {trials} trials {full:.1f} s",
             "", "| workers | videos | wall s | s / video | speed-up |", "|---|---|---|---|---|"]
    jobs = [VideoJob(r.sample_id, str(r.video_path), r.K[0], r.c2w) for r in gt]
    out = {"one_trial_s": one, "all_trials_s": full, "workers": {}}
    base = None
    for workers in range(1, max_workers + 1):
        config = CameraAccuracyConfig(trials=1, workers=workers, progress=False)
        t0 = time.perf_counter()
        evaluate_camera_accuracy(jobs, config)
        wall = time.perf_counter() - t0
        base = base or wall
        out["workers"][workers] = wall
        lines.append(f"| {workers} | {len(jobs)} | {wall:.1f} | {wall / len(jobs):.1f} | {base / wall:.2f}x |")
    return "\n".join(lines), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--kinds", nargs="+", default=["forward", "orbit", "truck", "mixed", "pan"])
    p.add_argument("--conditions", nargs="+", default=["gt", "shuffled", "frozen", "blur1.5", "noise8"])
    p.add_argument("--workers", type=int, default=2, help="workers for the validation run and the scaling sweep")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="keep the samples and results here")
    args = p.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="camvid_eval_validation_"))
    t0 = time.perf_counter()
    build(root, args.kinds, args.conditions, args.size, args.frames)
    print(f"rendered {len(args.kinds) * len(args.conditions)} videos in {time.perf_counter() - t0:.0f} s -> {root}")
    table, details = validation_table(root, args.conditions, args.trials, args.workers)
    print(f"\n## Known-camera validation ({args.size}x{args.size}, {args.frames} frames, {args.trials} trials)\n")
    print(table)
    if not args.skip_speed:
        text, timing = speed(root, args.trials, args.workers)
        details["speed"] = timing
        print("\n## Speed\n")
        print(text)
    (root / "validation.json").write_text(json.dumps(details, indent=1, default=str))


if __name__ == "__main__":
    main()
