"""`make demo`: the whole life of an experiment on a laptop CPU, in a few minutes.

1. render synthetic RealEstate10K-format scenes with exact depth (data_prep/synthetic.py)
2. pack them into WebDataset shards (data_prep/make_shards.py)
3. train the tiny CamI2V (epipolar attention + registers) on them (src/train.py experiment=demo)
4. sample videos along the held-out clips' cameras (src/sample.py, batch mode)
5. measure them (src/evaluate.py): camera following against the exact-depth warp of the
   conditioning frame (beside the GT, static and wrong-trajectory references) and camera accuracy
   by SfM (pycolmap, on frames upscaled for the feature extractor, see docs/evaluation.md)
6. write a side-by-side GIF (conditioning | generated | ground truth | warped reference) and a plot of
   the camera-following score per frame next to the table

Every stage is the same command a researcher runs by hand; this script only chains them, keeps
each stage's log in <out>/logs/ (the console shows one progress bar per stage) and times them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# The tiny world's frames: SIZE x SIZE pixels, read from the tiny DynamiCrafter's config (rendered at the
# model's resolution, so the metric's depth is exact per pixel), and RENDER_FRAMES per clip, of which
# training reads 8 at strides 1-2 and the test clips 8 at stride 2 (the whole move). Shared with
# scripts/make_tiny_base.py.
_TINY = yaml.safe_load((REPO / "conf" / "backbone" / "tiny_dynamicrafter.yaml").read_text())
if _TINY["height"] != _TINY["width"]:
    raise SystemExit(f"conf/backbone/tiny_dynamicrafter.yaml: the demo renders square frames, got "
                     f"{_TINY['height']}x{_TINY['width']}")
SIZE = int(_TINY["height"])
RENDER_FRAMES = 16
# The tiny world's SfM settings (frames 1..T-1, SIFT's contrast threshold, the frame upscale; docs/evaluation.md,
# "Camera accuracy in the tiny world"), read from where the tiny tables take them: conf/scale/tiny.yaml
_TINY_CAMERA = yaml.safe_load((REPO / "conf" / "scale" / "tiny.yaml").read_text())["stage_eval"]["camera"]
TINY_SFM = [f"camera.first_frame={_TINY_CAMERA['first_frame']}",
            f"camera.sfm.upscale={_TINY_CAMERA['sfm']['upscale']}",
            f"camera.sfm.peak_threshold={_TINY_CAMERA['sfm']['peak_threshold']}"]


def run(stage: str, cmd: list[str], timings: dict, env: dict, logs: Path) -> None:
    """Run one stage: its stdout (configs, library INFO logging) goes to <logs>/<stage>.log, stderr
    (the progress bar, warnings, errors) to the console."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{stage.replace('/', '_')}.log"
    print(f"=== {stage}  (log: {log})", flush=True)
    start = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=None)
    timings[stage] = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"stage {stage} failed (exit {proc.returncode}); see {log}")
    print(f"    done in {timings[stage]:.1f} s", flush=True)


def demo_env() -> dict:
    """Offline, W&B quiet (each stage's entry point sets its OpenMP waiting itself: camvid.threads)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE=os.environ.get("WANDB_MODE", "offline"),
               CAMVID_RUN_ID="demo", WANDB_SILENT="true")
    return env


def report(samples: Path, evald: Path, max_rows: int = 4) -> dict[str, Path]:
    """The side-by-side GIF and the per-frame plot from the samples and the evaluation's details."""
    sys.path.insert(0, str(REPO / "src"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from camvid.evaluation.camera_following import DEPTH_FILE, warp_to_camera
    from camvid.evaluation.layout import read_samples
    from camvid.viz.video import write_gif

    per_video = json.loads((evald / "camera_following_per_video.json").read_text())
    records = {r.sample_id: r for r in read_samples(samples)}
    rows = []
    for v in per_video[:max_rows]:
        r = records[v["sample_id"]]
        gen, gt = r.load_video(), r.load_gt_video()
        depth = np.load(r.path / DEPTH_FILE)
        cond = gt[0].astype(np.float32) / 255.0
        rel = np.linalg.inv(r.c2w[0]) @ r.c2w
        warped = []
        for t in range(len(gen)):
            w, m = warp_to_camera(cond, depth, r.K[0], rel[0], r.K[t], rel[t])
            w[~m] = 0.0  # black: not visible from the conditioning frame
            warped.append(np.round(w * 255).astype(np.uint8))
        cond_rep = np.repeat(gt[:1], len(gen), axis=0)
        rows.append(np.concatenate([cond_rep, gen, gt, np.stack(warped)], axis=2))
    grid = np.concatenate(rows, axis=1)
    scale = max(1, 512 // grid.shape[2])  # nearest-neighbour enlargement of small frames, to about 512 px wide
    grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    gif = evald / "side_by_side.gif"
    write_gif(gif, grid, fps=4)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label, style in (("gt", "ground truth (upper bound)", "-"), ("generated", "generated", "-o"),
                              ("static", "conditioning frame repeated", "--"),
                              ("wrong_trajectory", "generated vs other clips' cameras", ":")):
        curves = [v[key]["psnr_per_frame"] for v in per_video if key in v]
        if not curves:
            continue
        arr = np.array(curves, dtype=float)[:, 1:]
        ax.plot(np.arange(1, arr.shape[1] + 1), np.nanmean(arr, axis=0), style, label=label)
    ax.set_xlabel("frame")
    ax.set_ylabel("camera-following PSNR (dB)")
    ax.set_title(f"camera following, mean over {len(per_video)} test clips")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = evald / "camera_following.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    return {"gif": gif, "plot": plot}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="everything the demo writes goes here")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: conf/experiment/demo.yaml)")
    p.add_argument("--clips", type=int, default=192,
                   help="synthetic clips to render (every 6th is a test clip: all five trajectory kinds are tested)")
    p.add_argument("--samples", type=int, default=32, help="test clips to sample and evaluate (the demo holds out 32)")
    p.add_argument("--trials", type=int, default=2, help="SfM trials per video (the paper uses 5)")
    args = p.parse_args(argv)

    out = (REPO / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    data, run_dir, samples, evald = out / "data" / "synthetic", out / "train", out / "samples", out / "eval"
    logs = out / "logs"
    py = sys.executable
    env = demo_env()
    quiet = ["hydra.job_logging.root.level=WARNING"]
    timings: dict[str, float] = {}
    total = time.perf_counter()

    if not (data / "captions.json").is_file():
        # rendered at the model's resolution: the depth the metric warps with is then exact per pixel
        run("render", [py, "data_prep/synthetic.py", "--out", str(data), "--num-clips", str(args.clips),
                       "--num-frames", str(RENDER_FRAMES), "--height", str(SIZE), "--width", str(SIZE),
                       "--texture-size", "128", "--seed", "0", "--test-every", "6"], timings, env, logs)
    for split in ("train", "test"):
        if not (data / "shards" / split / "manifest.json").is_file():
            run(f"shards/{split}", [py, "data_prep/make_shards.py", "re10k", "--root", str(data), "--split", split,
                                    "--out", str(data / "shards" / split), "--shard-size", "8"], timings, env, logs)
    steps = [f"trainer.max_steps={args.steps}"] if args.steps else []
    run("train", [py, "src/train.py", "experiment=demo", *steps, f"data.root={data}",
                  f"hydra.run.dir={run_dir}", *quiet], timings, env, logs)
    run("sample", [py, "src/sample.py", f"run_dir={run_dir}", f"test_data={data}",
                   f"num_samples={args.samples}", f"out_dir={samples}", f"hydra.run.dir={out / 'sample_logs'}",
                   *quiet], timings, env, logs)
    run("evaluate", [py, "src/evaluate.py", f"samples_dir={samples}", f"out_dir={evald}",
                     f"camera.trials={args.trials}", "camera.workers=2", *TINY_SFM,
                     # no domain-size pooling: 10 s less, which keeps the demo inside 15 minutes
                     "camera.sfm.domain_size_pooling=false",
                     "metrics=[camera_following,camera]",
                     "reference=true",
                     f"hydra.run.dir={out / 'eval_logs'}", *quiet], timings, env, logs)
    start = time.perf_counter()
    figures = report(samples, evald)
    timings["report"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - total

    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    print("\n" + (evald / "results.md").read_text())
    print("=== camvid demo finished")
    for stage, sec in timings.items():
        print(f"  {stage:<14} {sec:7.1f} s")
    print(f"  data (RealEstate10K layout + depth + shards): {data}")
    print(f"  training run (config, checkpoints, W&B offline run): {run_dir}")
    print(f"  samples (mp4 + gif + cameras.txt + depth.npy, GT beside): {samples}")
    print(f"  results table: {evald / 'results.md'}")
    print(f"  side-by-side GIF (conditioning | generated | ground truth | warped reference): {figures['gif']}")
    print(f"  camera following per frame: {figures['plot']}")
    if (evald / "cameras").is_dir():
        print(f"  requested vs recovered (SfM) cameras per video: {evald / 'cameras'}")
    print(f"  stage logs: {logs}")


if __name__ == "__main__":
    main()
