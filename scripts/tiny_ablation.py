"""CamI2V's Table 1 / Table 2 at tiny size on the synthetic world, on a laptop CPU.

Every row of the chosen table is trained (the demo recipe: conf/experiment/demo.yaml), sampled on
the held-out synthetic clips and evaluated, once per seed; the table prints mean ± std over seeds
with the paper's numbers beside (src/camvid/evaluation/paper_numbers.yaml). The tiny world's own
measure is the camera-following score (docs/evaluation.md): PSNR of the generated frames against the
conditioning frame warped with exact depth into each requested camera; the SfM camera errors come
along with ``--sfm``.

    python scripts/tiny_ablation.py --table cami2v_t2 --seeds 3            # hours on 2 cores
    python scripts/tiny_ablation.py --table cami2v_t1 --seeds 1 --steps 300 --rows dynamicrafter,cami2v

Everything goes under ``--out`` (default outputs/tiny_ablation/<table>): one folder per row and seed
(training run, samples, evaluation), the table as ``table.md`` and ``table.json``. A finished row and
seed is not run again (delete its folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (docs/performance.md)

# row id (paper_numbers.yaml) -> (label, config overrides)
ROWS = {
    "cami2v_t1_dynamicrafter": ("no camera (DynamiCrafter)", ["model=dynamicrafter", "attn=temporal"]),
    "cami2v_t1_motionctrl": ("MotionCtrl", ["model=motionctrl", "attn=temporal"]),
    "cami2v_t1_cameractrl": ("CameraCtrl", ["model=cameractrl", "attn=temporal"]),
    "cami2v_t1_cami2v": ("CamI2V (Plücker + epipolar, all frames)", ["model=cami2v", "attn=epipolar"]),
    "cami2v_t2_camco_like": ("Plücker + epipolar, reference frame", ["model=cami2v", "attn=epipolar_ref"]),
    "cami2v_t2_full3d": ("Plücker + 3D full attention", ["model=cami2v", "attn=full3d"]),
    "cami2v_t2_pluecker_only": ("Plücker only", ["model=cami2v", "attn=temporal"]),
}
TABLES = {
    "cami2v_t1": ["cami2v_t1_dynamicrafter", "cami2v_t1_motionctrl", "cami2v_t1_cameractrl", "cami2v_t1_cami2v"],
    "cami2v_t2": ["cami2v_t1_cami2v", "cami2v_t2_camco_like", "cami2v_t2_full3d", "cami2v_t2_pluecker_only",
                  "cami2v_t1_dynamicrafter"],
}
SHORT = {r.split("_t1_")[-1].split("_t2_")[-1]: r for r in ROWS}  # e.g. "cami2v" -> cami2v_t1_cami2v
OURS = ("CamFollowPSNR", "CamFollowPSNR_wrong_traj", "FirstFramePSNR")
SFM = ("RotErr", "TransErr", "CamMC")
# the same recipe for every row: the demo's learning rate and sampler (model=dynamicrafter's own
# defaults are the official fine-tuning ones: lr 1e-5, 50 DDIM steps)
COMMON = ["experiment=demo", "logger=none", "model.optimizer.lr=1e-3", "model.sampler=${backbone.sampler}",
          "model.guidance=${backbone.guidance}", "hydra.job_logging.root.level=WARNING"]


def resolve_rows(table: str, rows: str | None) -> list[str]:
    if table not in TABLES:
        raise SystemExit(f"--table {table}: choose one of {', '.join(TABLES)}")
    if not rows:
        return TABLES[table]
    out = []
    for name in rows.split(","):
        rid = name if name in ROWS else SHORT.get(name)
        if rid is None:
            raise SystemExit(f"--rows: unknown row {name!r}; use row ids ({', '.join(ROWS)}) or short names "
                             f"({', '.join(SHORT)})")
        out.append(rid)
    return out


def _compose(overrides: list[str], config_name: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def run_one(row: str, seed: int, folder: Path, data: Path, args) -> dict:
    """Train, sample and evaluate one row at one seed; returns the evaluation's results rows."""
    from camvid.evaluation.pipeline import run_evaluation
    from camvid.sampling import run_sampling
    from camvid.training.loop import train

    done = folder / "eval" / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir = folder / "train"
    overrides = [*COMMON, *ROWS[row][1], f"seed={seed}", f"data.root={data}", f"paths.output_dir={run_dir}",
                 f"trainer.max_steps={args.steps}", f"trainer.ckpt_every={args.steps}",
                 f"backbone.height={args.size}", f"backbone.width={args.size}",
                 f"backbone.num_frames={args.frames}", *args.override]
    train(_compose(overrides, "train"))
    run_sampling(_compose([f"run_dir={run_dir}", f"test_data={data}", f"num_samples={args.samples}",
                           f"out_dir={folder / 'samples'}", f"seed={1000 + seed}"], "sample"))
    metrics = "[camera_following,camera]" if args.sfm else "[camera_following]"
    cfg = _compose([f"samples_dir={folder / 'samples'}", f"out_dir={folder / 'eval'}", f"metrics={metrics}",
                    f"camera.trials={args.trials}", "camera.progress=false", f"paths.output_dir={folder}"], "eval")
    from omegaconf import OmegaConf

    run_evaluation(OmegaConf.to_container(cfg, resolve=True))
    return json.loads(done.read_text())


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def aggregate(results: dict[str, list[dict]], sfm: bool) -> list[dict]:
    """One entry per row: mean and std over seeds of each metric, and the reference values."""
    from camvid.evaluation.tables import paper_row

    ours = list(OURS) + (list(SFM) if sfm else [])
    table = []
    for row, runs in results.items():
        entry = {"row": row, "label": ROWS[row][0], "seeds": len(runs), "metrics": {}, "paper": {}}
        for m in ours:
            vals = [next((r["value"] for r in run["rows"] if r["metric"] == m), None) for run in runs]
            entry["metrics"][m] = _mean_std(vals)
        refs = {}
        for run in runs:
            for r in run["rows"]:
                if r["metric"] in ("CamFollowPSNR", "CamFollowPSNR_static") and r["reference"] is not None:
                    refs.setdefault("gt", []).append(r["reference"])
                if r["metric"] == "CamFollowPSNR_static" and r["value"] is not None:
                    refs.setdefault("static", []).append(r["value"])
        entry["static"] = _mean_std(refs.get("static", []))[0]
        entry["gt"] = _mean_std(refs.get("gt", []))[0]
        paper = paper_row(row)
        entry["paper"] = {m: paper["metrics"].get(m) for m in SFM} if paper else {}
        table.append(entry)
    return table


def to_markdown(table: list[dict], title: str, sfm: bool) -> str:
    def fmt(ms: tuple) -> str:
        mean, std = ms
        return "not computed" if mean is None else f"{mean:.2f} ± {std:.2f}"

    cols = ["CamFollowPSNR ↑", "vs wrong trajectory ↓", "first frame PSNR ↑"] + (
        ["RotErr ↓", "TransErr ↓", "CamMC ↓"] if sfm else [])
    lines = [f"### {title}", "", "| row | seeds | " + " | ".join(cols) + " | paper RotErr | paper TransErr | "
             "paper CamMC |", "|" + "---|" * (len(cols) + 5)]
    for e in table:
        ours = [fmt(e["metrics"][m]) for m in OURS] + ([fmt(e["metrics"][m]) for m in SFM] if sfm else [])
        paper = ["" if e["paper"].get(m) is None else f"{e['paper'][m]:.4g}" for m in SFM]
        lines.append(f"| {e['label']} | {e['seeds']} | " + " | ".join(ours + paper) + " |")
    static = [e["static"] for e in table if e["static"] is not None]
    gt = [e["gt"] for e in table if e["gt"] is not None]
    if static and gt:
        lines += ["", f"References on the same clips (camera-following PSNR): ground-truth videos "
                  f"{sum(gt) / len(gt):.2f} dB (upper bound), conditioning frame repeated {sum(static) / len(static):.2f} dB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="cami2v_t2", help=f"one of {', '.join(TABLES)}")
    p.add_argument("--rows", default=None, help="comma-separated subset of the table's rows (ids or short names)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600, help="training steps per row and seed")
    p.add_argument("--size", type=int, default=64, help="frame height = width")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--samples", type=int, default=6, help="held-out clips sampled per run")
    p.add_argument("--sfm", action="store_true", help="also run the SfM camera-accuracy protocol")
    p.add_argument("--trials", type=int, default=1, help="SfM trials per video (with --sfm)")
    p.add_argument("--clips", type=int, default=30, help="synthetic clips rendered (every 5th is a test clip)")
    p.add_argument("--data", default=None, help="an existing synthetic data root (default: render one)")
    p.add_argument("--out", default=None, help="default: outputs/tiny_ablation/<table>")
    p.add_argument("--override", action="append", default=[], help="extra training override (repeatable)")
    args = p.parse_args(argv)

    rows = resolve_rows(args.table, args.rows)
    out = Path(args.out or REPO / "outputs" / "tiny_ablation" / args.table)
    data = Path(args.data) if args.data else out / "data"
    if not (data / "captions.json").is_file():
        from camvid.data.synthetic_writer import write_synthetic_re10k

        write_synthetic_re10k(data, num_clips=args.clips, num_frames=40, height=args.size, width=args.size,
                              seed=0, texture_size=128)
    results: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for row in rows:
        for seed in range(args.seeds):
            start = time.perf_counter()
            results.setdefault(row, []).append(run_one(row, seed, out / row / f"seed{seed}", data, args))
            print(f"[{time.perf_counter() - t0:7.0f} s] {row} seed {seed} done in {time.perf_counter() - start:.0f} s",
                  flush=True)
    table = aggregate(results, args.sfm)
    title = (f"{args.table} at tiny size: {args.steps} steps, {args.frames} frames at {args.size}x{args.size}, "
             f"{args.seeds} seed(s), {args.samples} held-out clips")
    md = to_markdown(table, title, args.sfm)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(md)
    (out / "table.json").write_text(json.dumps({"title": title, "rows": table}, indent=2))
    print(md)
    print(f"table: {out / 'table.md'}")


if __name__ == "__main__":
    main()
