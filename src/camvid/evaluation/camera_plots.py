"""Requested vs recovered cameras of evaluated videos, drawn by the trajectory viewer.

Both paths are shown canonicalised as the metrics see them (relative to frame 0, furthest camera at
distance 1), so what the picture shows is what RotErr / TransErr measure. The recovered path is the
first successful SfM trial's; a video whose trials all failed shows the requested path and the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from camvid.evaluation.layout import SampleRecord

__all__ = ["draw_requested_vs_recovered"]


def draw_requested_vs_recovered(records: list[SampleRecord], per_video: list[dict], out_dir: str | Path,
                                max_videos: int | None = 16) -> list[Path]:
    """``out_dir/<sample_id>.png`` for the first ``max_videos`` videos (None: all); returns the paths."""
    from camvid.viz import plot_cameras

    results = {v["sample_id"]: v for v in per_video}
    out_dir = Path(out_dir)
    written = []
    for record in records[: max_videos if max_videos is not None else len(records)]:
        result = results.get(record.sample_id)
        if result is None:
            continue
        ok = [t for t in result["trials"] if t["success"] and "c2w" in t]
        path = out_dir / f"{record.sample_id}.png"
        if ok:
            trial = ok[0]
            title = (f"{record.sample_id}: RotErr {trial['RotErr']:.3g}, TransErr {trial['TransErr']:.3g} "
                     f"(seed {trial['seed']})")
            # the recovered cameras are frames first_frame..T-1 (camera_accuracy.VideoJob)
            requested = record.c2w[int(result.get("first_frame", 0)):]
            plot_cameras([requested, np.asarray(trial["c2w"])], path, labels=["requested", "recovered (SfM)"],
                         normalize=True, title=title)
        else:
            reasons = "; ".join(sorted({t["reason"] for t in result["trials"]})) or "no trial"
            plot_cameras([record.c2w], path, labels=["requested"], normalize=True,
                         title=f"{record.sample_id}: SfM failed ({reasons[:60]})")
        written.append(path)
    return written
