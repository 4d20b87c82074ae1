"""Does a trained model's cross-frame attention land on the true match? (synthetic data, exact depth)

For a training run (or one checkpoint), each test clip's conditioning pixels on a grid are projected
with their exact depth into the other frames; the attention of those query pixels is captured on the
clip's own video noised to a few timesteps (``camvid.inspection.noised_forward``), and each layer's
attention on the conditioning frame is split into: near the true match (3x3 cells), near the query's
own position, and chance (the match's share of the keys the mask lets the query see there). A layer
that matches puts several times chance on the match; one that averages along the band sits at chance.

    python benchmarks/attention_matches.py outputs/demo/train --clips 3
    python benchmarks/attention_matches.py RUN/checkpoints/step_00000600 --timesteps 999 749 499 249
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from camvid.attention import capture  # noqa: E402
from camvid.evaluation.camera_following import conditioning_depth  # noqa: E402
from camvid.inspection import conditioning_matches, load_run, match_mass_rows, noised_forward  # noqa: E402
from camvid.sampling import eval_split_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a training run directory or <run>/checkpoints/step_<N>")
    p.add_argument("--data", default=None, help="data root with depth (default: the run's data.root)")
    p.add_argument("--clips", type=int, default=3, help="test clips")
    p.add_argument("--timesteps", type=int, nargs="+", default=[999, 749, 499, 249])
    p.add_argument("--step", type=int, default=12, help="grid step of the conditioning pixels")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    root = args.data or str(run.cfg.data.root)
    dataset = eval_split_dataset(run.cfg, root, split="test", stride=int(run.cfg.data.stride_eval))
    per_layer: dict[str, list[dict]] = {}
    for idx in range(min(args.clips, len(dataset))):
        batch = dataset.collate([dataset[idx]])
        cond = int(batch["cond_index"][0])
        depth = conditioning_depth(root, "test", str(batch["key"][0]), int(batch["frame_indices"][0][cond]),
                                   run.image_hw)
        if depth is None:
            raise SystemExit(f"{root}: the test clips have no depth (the synthetic data set writes test/depth/)")
        K, c2w = batch["K"][0].numpy(), batch["c2w"][0].numpy()
        queries, sources = conditioning_matches(depth, K, c2w, range(K.shape[0]), cond, args.step)
        with capture(run.method, queries=queries) as maps:
            noised_forward(run, batch, args.timesteps, seed=idx)
        for row in match_mass_rows(run.name, maps, sources, key_frame=cond):
            per_layer.setdefault(row["layer"], []).append(row)
    print(f"{run.name} at {run.checkpoint}: {args.clips} test clips, timesteps {args.timesteps}")
    print("| layer | level | on cond frame | near true match | near own position | chance | match / chance | "
          "match by timestep |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in per_layer.items():
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("frame", "match", "static", "chance")}
        by_t = np.mean([r["match_by_timestep"] for r in rows], axis=0)
        short = name.replace("model.diffusion_model.", "").replace(".transformer_blocks.0.epipolar.epipolar_attn", "")
        print(f"| {short} | {rows[0]['level'][0]}x{rows[0]['level'][1]} | {mean['frame']:.3f} | {mean['match']:.3f} | "
              f"{mean['static']:.3f} | {mean['chance']:.3f} | {mean['match'] / max(mean['chance'], 1e-12):.2f} | "
              + " / ".join(f"{v:.3f}" for v in by_t) + " |")


if __name__ == "__main__":
    main()
