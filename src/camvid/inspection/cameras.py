"""Requested vs recovered cameras of a sampled video: the evaluation's SfM poses and per-frame errors.

The evaluation (``src/evaluate.py``, metrics=[camera]) stores every successful SfM trial's poses in
``results.json`` (details.camera.per_video[].trials[].c2w); :func:`recovered_cameras` reads them, or
runs the same SfM (``camvid.evaluation.sfm``, the evaluation's default options) when the folder has
not been evaluated. Errors are the evaluation's (CamI2V eqs. 10-12) per frame, before the sum.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camvid.evaluation.layout import SampleRecord
from camvid.evaluation.pose_metrics import cammc_errors, canonicalize, rotation_errors, translation_errors

__all__ = ["RecoveredCameras", "recovered_cameras", "per_frame_errors", "evaluation_results", "pick_sample"]


@dataclass
class RecoveredCameras:
    """SfM poses of one video (``c2w`` (T, 4, 4) of the first successful trial, None if all failed)."""

    c2w: np.ndarray | None
    seed: int | None
    source: str  # where they come from: the evaluation's results.json, or an SfM run here
    trials: list[dict] = field(default_factory=list)  # seed, success, reason of every trial

    @property
    def failure(self) -> str:
        reasons = sorted({t.get("reason") or "failed" for t in self.trials if not t["success"]})
        return "; ".join(reasons) or "no trial"


def evaluation_results(eval_dir: str | Path) -> dict | None:
    """The evaluation's results.json (None when the folder has none)."""
    path = Path(eval_dir) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _from_results(results: dict, sample_id: str, kind: str) -> RecoveredCameras | None:
    details = (results.get("details") or {}).get("camera" if kind == "video" else "camera_reference") or {}
    for video in details.get("per_video", []):
        if video["sample_id"] != sample_id:
            continue
        trials = video["trials"]
        ok = [t for t in trials if t["success"]]
        if ok and "c2w" not in ok[0]:
            return None  # evaluated before poses were stored: recompute
        c2w = np.asarray(ok[0]["c2w"], dtype=np.float64) if ok else None
        return RecoveredCameras(c2w, ok[0]["seed"] if ok else None, "evaluation results.json", trials)
    return None


def recovered_cameras(record: SampleRecord, eval_dir: str | Path | None = None, kind: str = "video",
                      trials: int = 1, base_seed: int = 0) -> RecoveredCameras:
    """SfM cameras of ``record``'s generated video (``kind="video"``) or of its ground truth ("gt")."""
    if kind not in ("video", "gt"):
        raise ValueError(f"kind must be 'video' (generated) or 'gt' (ground-truth video), got {kind!r}")
    if kind == "gt" and record.gt_video_path is None:
        raise ValueError(f"sample {record.sample_id} has no gt.mp4")
    results = evaluation_results(eval_dir) if eval_dir else None
    found = _from_results(results, record.sample_id, kind) if results else None
    if found is not None:
        return found
    from camvid.evaluation.sfm import SfmOptions, run_sfm

    frames = record.load_video() if kind == "video" else record.load_gt_video()
    runs = run_sfm(frames, record.K[0], [base_seed + i for i in range(trials)], SfmOptions())
    entries = [{"seed": t.seed, "success": t.success, "reason": t.reason} for t in runs]
    ok = [t for t in runs if t.success]
    return RecoveredCameras(ok[0].c2w if ok else None, ok[0].seed if ok else None, "SfM run here", entries)


def per_frame_errors(est_c2w: np.ndarray, gt_c2w: np.ndarray) -> dict[str, np.ndarray]:
    """RotErr (radians), TransErr and CamMC of every frame, on the evaluation's canonical poses
    (relative to frame 0, furthest camera at distance 1); their sums are the evaluation's numbers."""
    est, gt = canonicalize(est_c2w), canonicalize(gt_c2w)
    if est.shape != gt.shape:
        raise ValueError(f"recovered poses {est.shape} and requested poses {gt.shape} differ in frame count")
    return {"RotErr": rotation_errors(est[:, :3, :3], gt[:, :3, :3]),
            "TransErr": translation_errors(est[:, :3, 3], gt[:, :3, 3]),
            "CamMC": cammc_errors(est, gt)}


def pick_sample(records: list[SampleRecord], results: dict | None) -> SampleRecord:
    """The first sample whose generated video the evaluation's SfM recovered (the most to look at),
    else the first sample."""
    if not records:
        raise ValueError("the samples folder holds no sample")
    for record in records:
        found = _from_results(results, record.sample_id, "video") if results else None
        if found is not None and found.c2w is not None:
            return record
    return records[0]
