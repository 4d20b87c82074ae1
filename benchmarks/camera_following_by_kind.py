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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

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
    def cell(key: str, ref: str) -> str:
        d = [r[key]["psnr"] - r[ref]["psnr"] for r in rows if key in r and ref in r]
        return f"{statistics.mean(d):+.2f} ({sum(x > 0 for x in d)}/{len(d)})" if d else "-"

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


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dir", type=Path)
    p.add_argument("data_root", type=Path)
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    path = args.eval_dir / "camera_following_per_video.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; evaluate with metrics including camera_following and reference=true")
    per_video = json.loads(path.read_text())
    kinds = {r["sample_id"]: clip_kind(args.data_root, args.split, r["sample_id"]) for r in per_video}
    out = table(per_video, kinds)
    print(out)
    return out


if __name__ == "__main__":
    main()
