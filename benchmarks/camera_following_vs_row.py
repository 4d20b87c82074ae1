"""Each row of a tiny table against a reference row (usually "no camera"), paired per video and seed.

    python benchmarks/camera_following_vs_row.py SWEEP_DIR REFERENCE_PRESET [PRESET ...]
        e.g. python benchmarks/camera_following_vs_row.py outputs/tables/tiny_frozen/cami2v_t1 \\
                 cami2v_t1_dynamicrafter cami2v_t1_motionctrl cami2v_t1_cameractrl cami2v_t1_cami2v

SWEEP_DIR holds ``<preset>/seed_<s>/samples/eval/camera_following_per_video.json`` (a ``scale=tiny`` or
``tiny_frozen`` table sweep). Every row of a table samples the same test clips with the same noise, so a
video's camera-following margin (its CamFollowPSNR minus that against the other videos' trajectories, dB)
can be compared with the same video's margin in the reference row. Per preset and seed: the mean of those
per-video differences, its standard error over the videos and the count of videos where the row is ahead;
then the seeds' mean ± std. Seeds whose job is not evaluated yet are left out and named. A seed the
reference row lacks is compared with the reference's first seed (a row that trains nothing, such as the
frozen base, is the same in every seed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from camvid.evaluation.camera_following import paired_margin  # noqa: E402


def per_video_file(job: Path) -> Path:
    return job / "samples" / "eval" / "camera_following_per_video.json"


def video_margins(job: Path) -> dict[str, float]:
    """Per video of one job: CamFollowPSNR minus its score against the other videos' trajectories."""
    path = per_video_file(job)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (evaluate the job with the camera_following metric)")
    out = {}
    for row in json.loads(path.read_text()):
        if "wrong_trajectory" in row:
            d = row["generated"]["psnr"] - row["wrong_trajectory"]["psnr"]
            if math.isfinite(d):
                out[row["sample_id"]] = d
    return out


def seeds_of(sweep: Path, preset: str) -> tuple[dict[int, Path], list[int]]:
    """The preset's evaluated jobs by seed, and the seeds whose job is not evaluated yet."""
    jobs = {int(p.name.split("_", 1)[1]): p for p in (sweep / preset).glob("seed_*") if p.name[5:].isdigit()}
    done = {s: j for s, j in sorted(jobs.items()) if per_video_file(j).is_file()}
    if not done:
        raise FileNotFoundError(f"{sweep / preset}: no evaluated seed_* job (with the camera_following metric)")
    return done, sorted(set(jobs) - set(done))


def compare(sweep: Path, reference: str, presets: list[str]) -> list[dict]:
    ref_jobs, _ = seeds_of(sweep, reference)
    rows = []
    for preset in presets:
        per_seed = []
        jobs, unfinished = seeds_of(sweep, preset)
        for seed, job in jobs.items():
            ref = video_margins(ref_jobs.get(seed, next(iter(ref_jobs.values()))))
            own = video_margins(job)
            pairs = [{"row": {"psnr": own[v]}, "reference": {"psnr": ref[v]}} for v in own if v in ref]
            m = paired_margin(pairs, "row", "reference")
            if m is None or m["n"] < 2:
                raise ValueError(f"{job}: fewer than 2 videos shared with {reference}")
            per_seed.append({"seed": seed, **m})
        means = [s["mean"] for s in per_seed]
        rows.append({"preset": preset, "seeds": per_seed, "mean": statistics.mean(means),
                     "std": statistics.stdev(means) if len(means) > 1 else 0.0, "unfinished": unfinished})
    return rows


def render(rows: list[dict], reference: str) -> str:
    lines = [f"| row | margin over {reference}, paired per video (mean ± std over seeds) | per seed: mean ± s.e. "
             "(videos ahead) |", "|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{s['mean']:+.2f} ± {s['se']:.2f} ({s['wins']}/{s['n']})" for s in r["seeds"])
        if r["unfinished"]:
            seeds += f"; not evaluated yet: seed {', '.join(map(str, r['unfinished']))}"
        lines.append(f"| {r['preset']} | {r['mean']:+.2f} ± {r['std']:.2f} | {seeds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("reference", help="the reference row's preset, e.g. cami2v_t1_dynamicrafter")
    p.add_argument("presets", nargs="+", help="the rows to compare with it")
    args = p.parse_args(argv)
    out = render(compare(args.sweep_dir, args.reference, args.presets), args.reference)
    print(out)
    return out


if __name__ == "__main__":
    main()
