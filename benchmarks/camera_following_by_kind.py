"""Camera following of an evaluated sample folder, split by the synthetic clips' trajectory kind and by how
far the camera moves (docs/diffusion.md, "The papers' frozen base in the demo").

    python benchmarks/camera_following_by_kind.py EVAL_DIR DATA_ROOT [--split test]
        e.g. python benchmarks/camera_following_by_kind.py outputs/demo/eval outputs/demo/data/synthetic

EVAL_DIR is an ``src/evaluate.py`` output folder with ``camera_following_per_video.json`` (``metrics`` with
``camera_following``); DATA_ROOT the synthetic RealEstate10K-layout data the samples came from, whose pose
files' URL line names each clip's trajectory kind (``synthetic://camvid/scene/<seed>/<kind>/...``).

Per kind, and for the two halves of the clips split at the median of the GT videos' margin over the still
frame (how far the view moves): the generated videos' paired margin over the other videos' trajectories
(mean dB, videos won), their margin over the still frame, and the GT videos' margins over both references.

``--samples SAMPLES_DIR`` (the sample folders the evaluation read) adds a direction table: per kind, the
generated and the GT videos scored (CamFollowPSNR, mean dB) against their own trajectory, its mirror image
(x -> -x in the first camera's frame: a pan or truck to the other side), its reverse (the inverse relative
poses: moving back instead of forward) and no move (every camera at the first one: how close the video
stays to its first view). A video that moves the right way scores best on its own trajectory; one that
moves the wrong way scores best mirrored or reversed; one that does not move scores best on no move.
The last two columns count the generated videos that score best on their own trajectory, and above its
mirror image.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def clip_kind(data_root: Path, split: str, clip_id: str) -> str:
    """The trajectory kind from the clip's pose-file URL line."""
    path = Path(data_root) / split / f"{clip_id}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pose file for sample {clip_id} (is DATA_ROOT the samples' test data?)")
    url = path.read_text().splitlines()[0].strip()
    parts = url.split("/")
    if not url.startswith("synthetic://camvid/scene/") or len(parts) < 6:
        raise ValueError(f"{path}: URL line {url!r} is not a synthetic clip's (synthetic://camvid/scene/<seed>/<kind>/...)")
    return parts[5]


def margins(rows: list[dict]) -> dict[str, str]:
    from camvid.evaluation.camera_following import paired_margin

    def cell(key: str, ref: str) -> str:
        m = paired_margin(rows, key, ref)
        return f"{m['mean']:+.2f} ({m['wins']}/{m['n']})" if m else "-"

    return {"over wrong": cell("generated", "wrong_trajectory"), "over still": cell("generated", "static"),
            "GT over wrong": cell("gt", "gt_wrong_trajectory"), "GT over still": cell("gt", "static")}


def table(per_video: list[dict], kinds: dict[str, str]) -> str:
    groups: dict[str, list[dict]] = {}
    for row in per_video:
        groups.setdefault(kinds[row["sample_id"]], []).append(row)
    moves = sorted(per_video, key=lambda r: r["gt"]["psnr"] - r["static"]["psnr"])
    half = len(moves) // 2
    named = [(k, groups[k]) for k in sorted(groups)] + [
        (f"smaller moves ({half})", moves[:half]), (f"larger moves ({len(moves) - half})", moves[half:]),
        (f"all ({len(per_video)})", per_video)]
    cols = list(margins(per_video))
    lines = ["| clips | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, rows in named:
        m = margins(rows)
        lines.append(f"| {name} | " + " | ".join(m[c] for c in cols) + " |")
    return "\n".join(lines)


# the first camera's x axis flipped: M @ rel @ M mirrors a relative trajectory left-right
_MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])
DIRECTIONS = ("own", "mirrored", "reversed", "no move")


def direction_scores(video: np.ndarray, cond_image: np.ndarray, depth: np.ndarray, K: np.ndarray,
                     c2w: np.ndarray) -> dict[str, float]:
    """CamFollowPSNR of ``video`` (T, H, W, 3) against its own trajectory ``c2w`` (T, 4, 4; frame 0 the
    conditioning frame) and the three other directions of :data:`DIRECTIONS`."""
    from camvid.evaluation.camera_following import score_video

    rel = np.linalg.inv(c2w[0]) @ c2w
    trajectories = {"own": rel, "mirrored": _MIRROR_X @ rel @ _MIRROR_X, "reversed": np.linalg.inv(rel),
                    "no move": np.broadcast_to(np.eye(4), rel.shape).copy()}
    return {name: score_video(video, cond_image, depth, K, t).mean_psnr for name, t in trajectories.items()}


def direction_table(samples_dir: Path, kinds: dict[str, str]) -> str:
    """Per kind (and all clips): the generated and GT videos' scores in every direction (mean dB)."""
    from camvid.evaluation.camera_following import DEPTH_FILE
    from camvid.evaluation.layout import read_samples

    groups: dict[str, list[dict]] = {}
    for r in read_samples(samples_dir):
        if r.sample_id not in kinds:
            continue
        gt = r.load_gt_video()
        depth_path = r.path / DEPTH_FILE
        if gt is None or not depth_path.is_file():
            raise SystemExit(f"{r.path}: needs gt.mp4 and {DEPTH_FILE} (synthetic test samples)")
        depth = np.load(depth_path).astype(np.float32)
        row = {("generated", d): v for d, v in direction_scores(r.load_video(), gt[0], depth, r.K, r.c2w).items()}
        row.update({("GT", d): v for d, v in direction_scores(gt, gt[0], depth, r.K, r.c2w).items()})
        groups.setdefault(kinds[r.sample_id], []).append(row)
    if not groups:
        raise SystemExit(f"{samples_dir}: none of the evaluated samples is there")
    cols = [(who, d) for who in ("generated", "GT") for d in DIRECTIONS]
    lines = ["| clips | " + " | ".join(f"{who}: {d}" for who, d in cols)
             + " | generated: own best | generated: own above mirrored |", "|---" * (len(cols) + 3) + "|"]
    everything = [row for rows in groups.values() for row in rows]

    def cell(rows: list[dict], col) -> str:
        vals = [r[col] for r in rows if math.isfinite(r[col])]
        return f"{statistics.mean(vals):.2f}" if vals else "-"

    def own_best(row: dict) -> bool:  # the generated video scores highest on its own trajectory
        return all(row[("generated", "own")] > row[("generated", d)] for d in DIRECTIONS[1:])

    def own_above_mirrored(row: dict) -> bool:
        return row[("generated", "own")] > row[("generated", "mirrored")]

    for name, rows in [*sorted(groups.items()), (f"all ({len(everything)})", everything)]:
        counts = [f"{sum(f(r) for r in rows)}/{len(rows)}" for f in (own_best, own_above_mirrored)]
        lines.append(f"| {name} | " + " | ".join(cell(rows, c) for c in cols) + " | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dir", type=Path)
    p.add_argument("data_root", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--samples", type=Path, default=None,
                   help="the sample folders the evaluation read: adds the direction table (own / mirrored / "
                        "reversed / no move)")
    args = p.parse_args(argv)
    path = args.eval_dir / "camera_following_per_video.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; evaluate with metrics including camera_following and reference=true")
    per_video = json.loads(path.read_text())
    kinds = {r["sample_id"]: clip_kind(args.data_root, args.split, r["sample_id"]) for r in per_video}
    out = table(per_video, kinds)
    if args.samples is not None:
        out += "\n\n" + direction_table(args.samples, kinds)
    print(out)
    return out


if __name__ == "__main__":
    main()
