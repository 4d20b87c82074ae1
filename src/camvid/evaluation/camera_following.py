"""Camera following on data with exact depth: does frame t look like the conditioning frame seen
from camera t?

The conditioning frame is warped into every requested camera with its exact z-depth and compared
with the generated frame on the pixels that both views see:

1. forward splat: every conditioning pixel is lifted to 3-D with its depth and projected into camera
   t; a z-buffer keeps the nearest surface per target pixel (each point writes the 2x2 target pixels
   around it, so a mild zoom leaves no holes);
2. backward sample: each target pixel with a splatted depth is lifted with that depth, projected back
   into the conditioning frame and sampled bilinearly there;
3. co-visibility: kept only if it lands inside the conditioning frame and the depth it arrives with
   agrees with the conditioning frame's own depth there (relative tolerance ``depth_tol``), which
   drops pixels occluded in one of the views and the fringes of depth edges.

Scores per frame: PSNR (images in [0, 1]) and L1 on the kept pixels; per video: the mean over frames
1..T-1 (frame 0 is the conditioning view itself; its PSNR against the conditioning image is reported
separately as ``first_frame_psnr``). References, computed the same way (see :func:`score_videos`):
the ground-truth video (upper bound), the conditioning frame repeated (a model that ignores the
camera) and the generated video against the *other* videos' trajectories (a model that follows its
camera scores clearly worse there).

Cameras: pixel ``K`` (T, 3, 3) and camera-to-world ``c2w`` (T, 4, 4) in OpenCV axes; only poses
relative to the conditioning frame matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CameraFollowingScore", "warp_to_camera", "masked_scores", "score_video", "score_videos",
           "DEPTH_FILE"]

#: z-depth of the conditioning frame at the video resolution, float32 (H, W), in a sample folder
DEPTH_FILE = "depth.npy"


def lift_pixels(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """World points (N, 3) of pixel centres (us, vs) at z-depth ``depth`` (N,)."""
    rays = np.stack([us, vs, np.ones_like(us)], -1) @ np.linalg.inv(K).T
    return (rays * depth[:, None]) @ c2w[:3, :3].T + c2w[:3, 3]


def project_points(points: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (continuous, centre of pixel i at i + 0.5) and z of world points."""
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = cam @ K.T
        u, v = pix[:, 0] / z, pix[:, 1] / z
    return u, v, z


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample (H, W[, C]) at continuous pixel coordinates (centres at +0.5), edge-clamped."""
    H, W = image.shape[:2]
    x, y = np.clip(u - 0.5, 0, W - 1), np.clip(v - 0.5, 0, H - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = x - x0, y - y0
    if image.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    return (image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x1] * fx * (1 - fy)
            + image[y1, x0] * (1 - fx) * fy + image[y1, x1] * fx * fy)


def warp_to_camera(image: np.ndarray, depth: np.ndarray, K_src: np.ndarray, c2w_src: np.ndarray,
                   K_dst: np.ndarray, c2w_dst: np.ndarray, depth_tol: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` (H, W, 3) float with z-depth ``depth`` (H, W) from camera (K_src, c2w_src) into
    (K_dst, c2w_dst). Returns (warped (H, W, 3), mask (H, W) bool of co-visible pixels)."""
    H, W = depth.shape
    if image.shape[:2] != (H, W):
        raise ValueError(f"image {image.shape[:2]} and depth {depth.shape} differ in size")
    if not np.isfinite(depth).all() or (depth <= 0).any():
        raise ValueError("depth must be finite and positive everywhere (the synthetic renderer's z-depth)")
    vs, us = np.mgrid[0:H, 0:W].astype(np.float64)
    us, vs = us.ravel() + 0.5, vs.ravel() + 0.5
    points = lift_pixels(depth.ravel().astype(np.float64), K_src, c2w_src, us, vs)

    # 1. z-buffered splat of the source points into the target view: each point into its nearest
    # pixel; pixels that got none (holes of a zoom-in) take the nearest surface among the points
    # whose 2x2 bilinear footprint covers them (a footprint everywhere would dilate near surfaces
    # over their depth edges)
    u, v, z = project_points(points, K_dst, c2w_dst)
    ok = (z > 1e-6) & np.isfinite(u) & np.isfinite(v)
    u, v, z = u[ok], v[ok], z[ok]

    def splat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        buf = np.full(H * W, np.inf)
        inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
        np.minimum.at(buf, y[inside] * W + x[inside], z[inside])
        return buf

    zbuf = splat(np.floor(u).astype(np.int64), np.floor(v).astype(np.int64))
    fill = np.full(H * W, np.inf)
    for dx in (0, 1):
        for dy in (0, 1):
            fill = np.minimum(fill, splat(np.floor(u - 0.5).astype(np.int64) + dx,
                                          np.floor(v - 0.5).astype(np.int64) + dy))
    zbuf = np.where(np.isfinite(zbuf), zbuf, fill)
    hit = np.isfinite(zbuf)

    # 2. lift the target pixels with the splatted depth, sample the source there
    warped = np.zeros((H * W, image.shape[2]), dtype=np.float64)
    mask = np.zeros(H * W, dtype=bool)
    idx = np.flatnonzero(hit)
    if len(idx):
        tgt = lift_pixels(zbuf[idx], K_dst, c2w_dst, us[idx], vs[idx])
        su, sv, sz = project_points(tgt, K_src, c2w_src)
        inside = (sz > 1e-6) & (su >= 0) & (su <= W) & (sv >= 0) & (sv <= H)
        src_depth = _bilinear(depth.astype(np.float64), su, sv)
        nearest = depth[np.clip(sv.astype(np.int64), 0, H - 1), np.clip(su.astype(np.int64), 0, W - 1)]
        # 3. co-visible: the source sees this surface point itself (bilinear and nearest depth agree
        # with the arriving z; near a depth edge they differ and the pixel is dropped)
        agree = (np.abs(src_depth - sz) <= depth_tol * sz) & (np.abs(nearest - sz) <= depth_tol * sz)
        keep = inside & agree
        warped[idx[keep]] = _bilinear(image.astype(np.float64), su[keep], sv[keep])
        mask[idx[keep]] = True
    return warped.reshape(H, W, -1).astype(np.float32), mask.reshape(H, W)


def masked_scores(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, L1) of images in [0, 1] over the masked pixels; NaN when the mask is empty."""
    if not mask.any():
        return math.nan, math.nan
    diff = (a[mask].astype(np.float64) - b[mask].astype(np.float64))
    mse = float((diff**2).mean())
    return (100.0 if mse <= 1e-10 else 10.0 * math.log10(1.0 / mse)), float(np.abs(diff).mean())


@dataclass
class CameraFollowingScore:
    """Per-frame scores of one video against one trajectory."""

    psnr: list[float]  # per frame, frame 0 included
    l1: list[float]
    coverage: list[float]  # fraction of pixels compared

    @property
    def mean_psnr(self) -> float:
        vals = [p for p in self.psnr[1:] if math.isfinite(p)]
        return float(np.mean(vals)) if vals else math.nan

    @property
    def mean_l1(self) -> float:
        vals = [x for x in self.l1[1:] if math.isfinite(x)]
        return float(np.mean(vals)) if vals else math.nan


def _as_float(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    return video.astype(np.float32) / 255.0 if video.dtype == np.uint8 else video.astype(np.float32)


def score_video(video: np.ndarray, cond_image: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                cond_index: int = 0, min_coverage: float = 0.05, depth_tol: float = 0.03) -> CameraFollowingScore:
    """Score ``video`` (T, H, W, 3; uint8 or [0, 1]) against the conditioning image (H, W, 3) warped
    into the cameras ``K`` (T, 3, 3), ``c2w`` (T, 4, 4) with the conditioning frame's ``depth``. A frame
    whose co-visible area is below ``min_coverage`` scores NaN (left out of the means)."""
    video, cond = _as_float(video), _as_float(cond_image)
    T, H, W = video.shape[:3]
    if cond.shape != (H, W, 3) or depth.shape != (H, W):
        raise ValueError(f"conditioning image {cond.shape} / depth {depth.shape} do not match the video's "
                         f"frames {(H, W)}")
    if len(K) != T or len(c2w) != T:
        raise ValueError(f"{len(K)} intrinsics / {len(c2w)} poses for a video of {T} frames")
    psnr, l1, cov = [], [], []
    for t in range(T):
        warped, mask = warp_to_camera(cond, depth, K[cond_index], c2w[cond_index], K[t], c2w[t], depth_tol)
        coverage = float(mask.mean())
        p, e = masked_scores(video[t], warped, mask) if coverage >= min_coverage else (math.nan, math.nan)
        psnr.append(p)
        l1.append(e)
        cov.append(coverage)
    return CameraFollowingScore(psnr, l1, cov)


def first_frame_psnr(video: np.ndarray, cond_image: np.ndarray, cond_index: int = 0) -> float:
    v, c = _as_float(video), _as_float(cond_image)
    return masked_scores(v[cond_index], c, np.ones(c.shape[:2], dtype=bool))[0]


def score_videos(generated: Sequence[np.ndarray], gt: Sequence[np.ndarray], depths: Sequence[np.ndarray],
                 Ks: Sequence[np.ndarray], c2ws: Sequence[np.ndarray], cond_index: int = 0,
                 depth_tol: float = 0.03) -> list[dict]:
    """Per video: the generated video and the three references, each scored the same way.

    ``gt[i][cond_index]`` is the conditioning image of video i. Rows hold ``psnr`` / ``l1`` (means over
    frames 1..T-1) and ``psnr_per_frame`` for ``generated``, ``gt`` (upper bound), ``static`` (the
    conditioning frame repeated) and ``wrong_trajectory`` (the generated video against each other
    video's relative trajectory, averaged; needs >= 2 videos) and ``gt_wrong_trajectory`` (the same for
    the GT video: what a model that follows its camera exactly loses on other trajectories), plus
    ``first_frame_psnr``."""
    n = len(generated)
    if not (len(gt) == len(depths) == len(Ks) == len(c2ws) == n):
        raise ValueError("score_videos: generated, gt, depths, Ks and c2ws must have one entry per video")
    rel = [np.linalg.inv(c[cond_index]) @ c for c in c2ws]
    out = []
    for i in range(n):
        cond = gt[i][cond_index]
        kw = dict(cond_index=cond_index, depth_tol=depth_tol)
        row = {"first_frame_psnr": first_frame_psnr(generated[i], cond, cond_index)}
        static = np.repeat(np.asarray(cond)[None], len(gt[i]), axis=0)
        for name, video in (("generated", generated[i]), ("gt", gt[i]), ("static", static)):
            s = score_video(video, cond, depths[i], Ks[i], rel[i], **kw)
            row[name] = {"psnr": s.mean_psnr, "l1": s.mean_l1, "psnr_per_frame": s.psnr, "coverage": s.coverage}
        others = [j for j in range(n) if j != i and len(rel[j]) == len(rel[i])]
        for name, video in (("wrong_trajectory", generated[i]), ("gt_wrong_trajectory", gt[i])):
            wrong = [score_video(video, cond, depths[i], Ks[i], rel[j], **kw) for j in others]
            if wrong:
                row[name] = {"psnr": float(np.nanmean([w.mean_psnr for w in wrong])),
                             "l1": float(np.nanmean([w.mean_l1 for w in wrong])),
                             "psnr_per_frame": np.nanmean([w.psnr for w in wrong], axis=0).tolist()}
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# over a samples folder (``make eval``)

FOLLOWING_METRICS = ("CamFollowPSNR", "CamFollowL1", "CamFollowPSNR_static", "CamFollowPSNR_wrong_traj",
                     "CamFollowMargin_static", "CamFollowMargin_wrong_traj", "FirstFramePSNR")


def paired_margin(per_video: Sequence[dict], key: str, reference: str, field: str = "psnr") -> dict | None:
    """The per-video difference ``per_video[i][key][field] - per_video[i][reference][field]`` over the
    videos where both are finite: {"mean", "se" (standard error of the mean; nan for one video), "wins"
    (videos with a positive difference), "n"}; None when no video has both."""
    diffs = [v[key][field] - v[reference][field] for v in per_video
             if key in v and reference in v and math.isfinite(v[key][field]) and math.isfinite(v[reference][field])]
    if not diffs:
        return None
    d = np.asarray(diffs, dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return {"mean": float(d.mean()), "se": se, "wins": int((d > 0).sum()), "n": len(d)}


def conditioning_depth(data_root, split: str, clip_id: str, frame_index: int, out_hw: tuple[int, int]) -> np.ndarray | None:
    """The z-depth of one frame of a RealEstate10K-layout clip (the synthetic data writes
    ``<split>/depth/<clip>.npy``), resized and centre-cropped like its frames (nearest neighbour, so
    no depth is invented across an edge); None when the data set has no depth."""
    import torch
    import torch.nn.functional as F

    from camvid.data.layout import depth_path
    from camvid.geometry.cameras import resize_crop_geometry

    path = depth_path(data_root, split, clip_id)
    if not path.is_file():
        return None
    depth = np.load(path, mmap_mode="r")[int(frame_index)].astype(np.float32)
    src_hw = depth.shape
    if tuple(src_hw) != tuple(out_hw):
        s, top, left = resize_crop_geometry(src_hw, out_hw)
        new_h, new_w = max(out_hw[0], round(src_hw[0] * s)), max(out_hw[1], round(src_hw[1] * s))
        d = F.interpolate(torch.from_numpy(depth)[None, None], size=(new_h, new_w), mode="nearest")[0, 0]
        depth = d[top:top + out_hw[0], left:left + out_hw[1]].numpy()
    return depth


def evaluate_samples(records, out_dir) -> tuple[list, dict]:
    """Rows of the results table and the per-video details for the sample folders ``records``
    (:class:`camvid.evaluation.layout.SampleRecord`); each needs ``gt.mp4`` and ``depth.npy``."""
    import json
    from pathlib import Path

    from camvid.evaluation.tables import ResultRow

    usable = [r for r in records if r.gt_video_path is not None and (r.path / DEPTH_FILE).is_file()]
    if not usable:
        note = f"not computed: needs {DEPTH_FILE} and gt.mp4 in the sample folders (synthetic test data)"
        return [ResultRow(m, None, note=note, better="lower" if m.endswith("L1") else "higher")
                for m in FOLLOWING_METRICS], {}
    gen, gt, depths, Ks, c2ws, ids = [], [], [], [], [], []
    for r in usable:
        gen.append(r.load_video())
        gt.append(r.load_gt_video())
        depths.append(np.load(r.path / DEPTH_FILE).astype(np.float32))
        Ks.append(r.K)
        c2ws.append(r.c2w)
        ids.append(r.sample_id)
    cond_index = int(usable[0].meta.get("cond_index", 0))
    per_video = score_videos(gen, gt, depths, Ks, c2ws, cond_index=cond_index)
    for sid, row in zip(ids, per_video):
        row["sample_id"] = sid

    def mean(key: str, field: str) -> float | None:
        vals = [v[key][field] for v in per_video if key in v and math.isfinite(v[key][field])]
        return float(np.mean(vals)) if vals else None

    def margin_row(metric: str, reference: str, gt_reference: str, what: str, missing: str) -> ResultRow:
        # paired per video: own-camera CamFollowPSNR minus the reference's (GT column: the GT videos' margin
        # over ``gt_reference``, the same reference for the GT video)
        gen = paired_margin(per_video, "generated", reference)
        gt_ref = paired_margin(per_video, "gt", gt_reference)
        if gen is None:
            return ResultRow(metric, None, None, better="higher", note=f"not computed: {missing}")
        se = "" if math.isnan(gen["se"]) else f" ± {gen['se']:.2f} (s.e.)"
        return ResultRow(metric, gen["mean"], None if gt_ref is None else gt_ref["mean"], better="higher",
                         note=f"CamFollowPSNR minus that of {what}, per video: mean{se} dB, higher in "
                              f"{gen['wins']} of {gen['n']} videos")

    n = f"{len(usable)}/{len(records)} videos, frames 1..T-1, co-visible pixels"
    first = [v["first_frame_psnr"] for v in per_video]
    rows = [
        ResultRow("CamFollowPSNR", mean("generated", "psnr"), mean("gt", "psnr"), better="higher",
                  note=f"conditioning frame warped into each camera with exact depth; {n}"),
        ResultRow("CamFollowL1", mean("generated", "l1"), mean("gt", "l1"), better="lower", note=n),
        ResultRow("CamFollowPSNR_static", mean("static", "psnr"), mean("gt", "psnr"), better="higher",
                  note="reference: the conditioning frame repeated (ignores the camera)"),
        ResultRow("CamFollowPSNR_wrong_traj", mean("wrong_trajectory", "psnr"), None, better="lower",
                  note="reference: the generated videos scored against the other videos' trajectories"
                  if len(usable) > 1 else "not computed: needs >= 2 videos"),
        margin_row("CamFollowMargin_static", "static", "static", "the still frame",
                   "no video has a finite score and still-frame score"),
        margin_row("CamFollowMargin_wrong_traj", "wrong_trajectory", "gt_wrong_trajectory",
                   "the other videos' trajectories", "needs >= 2 videos"),
        ResultRow("FirstFramePSNR", float(np.mean(first)), None, better="higher",
                  note="generated frame 0 against the conditioning image"),
    ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "camera_following_per_video.json").write_text(json.dumps(per_video, indent=1))
    return rows, {"camera_following": per_video}


def save_conditioning_depth(folder, data_root, split: str, batch: dict, index: int) -> bool:
    """Write ``DEPTH_FILE`` into a sample folder for video ``index`` of an evaluation batch when the
    test data has depth (the synthetic set); returns whether it did."""
    if "frame_indices" not in batch:
        return False
    from pathlib import Path

    cond = int(batch["cond_index"][index])
    hw = tuple(batch["video"].shape[-2:])
    depth = conditioning_depth(data_root, split, str(batch["key"][index]), int(batch["frame_indices"][index][cond]), hw)
    if depth is None:
        return False
    np.save(Path(folder) / DEPTH_FILE, depth)
    return True
