"""`make demo`: the whole life of an experiment on a laptop CPU, in a few minutes.

1. render synthetic RealEstate10K-format scenes (data_prep/synthetic.py)
2. pack them into WebDataset shards (data_prep/make_shards.py)
3. train the tiny CamI2V (epipolar attention + registers) on them (src/train.py experiment=demo)
4. sample videos along the test clips' cameras (src/sample.py, batch mode)
5. measure camera accuracy on the samples and on the ground-truth clips (src/evaluate.py)

Every stage is the same command a researcher runs by hand; this script only chains them and times them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(stage: str, cmd: list[str], timings: dict, env: dict) -> None:
    print(f"\n=== {stage}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    timings[stage] = time.perf_counter() - start
    print(f"=== {stage} done in {timings[stage]:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="everything the demo writes goes here")
    p.add_argument("--steps", type=int, default=200, help="training steps")
    p.add_argument("--clips", type=int, default=30, help="synthetic clips to render")
    p.add_argument("--samples", type=int, default=4, help="test clips to sample and evaluate")
    p.add_argument("--trials", type=int, default=2, help="SfM trials per video (the paper uses 5)")
    args = p.parse_args(argv)

    out = (REPO / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    data, run_dir, samples, evald = out / "data" / "synthetic", out / "train", out / "samples", out / "eval"
    py = sys.executable
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE=os.environ.get("WANDB_MODE", "offline"),
               CAMVID_RUN_ID="demo")
    timings: dict[str, float] = {}
    total = time.perf_counter()

    if not (data / "captions.json").is_file():
        run("render", [py, "data_prep/synthetic.py", "--out", str(data), "--num-clips", str(args.clips),
                       "--num-frames", "40", "--height", "72", "--width", "72", "--seed", "0"], timings, env)
    for split in ("train", "test"):
        if not (data / "shards" / split / "manifest.json").is_file():
            run(f"shards/{split}", [py, "data_prep/make_shards.py", "re10k", "--root", str(data), "--split", split,
                                    "--out", str(data / "shards" / split), "--shard-size", "8"], timings, env)
    run("train", [py, "src/train.py", "experiment=demo", f"trainer.max_steps={args.steps}",
                  f"data.root={data}", f"hydra.run.dir={run_dir}"], timings, env)
    run("sample", [py, "src/sample.py", f"run_dir={run_dir}", f"test_data={data}",
                   f"num_samples={args.samples}", f"out_dir={samples}", f"hydra.run.dir={out / 'sample_logs'}"],
        timings, env)
    run("evaluate", [py, "src/evaluate.py", f"samples_dir={samples}", f"out_dir={evald}",
                     f"camera.trials={args.trials}", "metrics=[camera]", "reference=true",
                     f"hydra.run.dir={out / 'eval_logs'}"], timings, env)
    timings["total"] = time.perf_counter() - total

    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    print("\n=== camvid demo finished")
    for stage, sec in timings.items():
        print(f"  {stage:<14} {sec:7.1f} s")
    print(f"  data (RealEstate10K layout + shards): {data}")
    print(f"  training run (config, checkpoints, W&B offline run): {run_dir}")
    print(f"  samples (mp4 + gif + cameras.txt, GT beside): {samples}")
    print(f"  camera-accuracy table: {evald}")


if __name__ == "__main__":
    main()
