"""``make eval``: every metric of both papers over one folder of samples, into one results table.

Each metric family runs on its own; a family that cannot run (a weight file missing, no GT videos,
no multi-view groups, too few videos) keeps its rows marked "not computed" with the reason, and
the others go on.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from camvid.evaluation.camera_accuracy import (
    CAMERA_METRICS,
    CameraAccuracyConfig,
    VideoJob,
    evaluate_camera_accuracy,
    failed_video_result,
    summarize_camera_results,
    wrong_trajectory_errors,
)
from camvid.evaluation.geometry_consistency import (
    AUC_THRESHOLDS,
    GeometryConsistencyConfig,
    cross_video_pairs,
    summarize_pairs,
    video_pairs,
)
from camvid.evaluation.layout import GT_VIDEO_FILE, SampleRecord, read_samples, screen_videos
from camvid.evaluation.sfm import SfmOptions
from camvid.evaluation.tables import ResultRow, paper_row, write_tables
from camvid.evaluation.weights import MissingWeights, require_weights
from camvid.fsutil import atomic_write_text

__all__ = ["METRIC_FAMILIES", "eval_settings", "run_evaluation"]

log = logging.getLogger(__name__)

METRIC_FAMILIES = ("camera", "camera_following", "geometry", "fvd", "fid_kid", "clip", "identical_mse")
_GEOMETRY_KEYS = [f"RotAUC@{t:g}" for t in AUC_THRESHOLDS] + [f"TransAUC@{t:g}" for t in AUC_THRESHOLDS] + [
    "Precision", "MatchingScore"]


def _groups(records: list[SampleRecord]) -> dict[str, list[SampleRecord]]:
    groups: dict[str, list[SampleRecord]] = defaultdict(list)
    for r in records:
        if r.group is not None:
            groups[str(r.group)].append(r)
    return {g: sorted(rs, key=lambda r: r.view) for g, rs in groups.items() if len(rs) >= 2}


def _not_computed(metrics: list[str], reason: str, better: str = "") -> list[ResultRow]:
    return [ResultRow(m, None, note=f"not computed: {reason}", better=better) for m in metrics]


def _camera_rows(records: list[SampleRecord], cfg: dict, out_dir: Path,
                 reference: bool, unusable: dict[str, str] | None = None) -> tuple[list[ResultRow], dict]:
    sfm = SfmOptions(**cfg.get("sfm", {}))
    config = CameraAccuracyConfig(
        trials=int(cfg.get("trials", 5)), base_seed=int(cfg.get("base_seed", 0)),
        workers=int(cfg.get("workers", 1)), sfm=sfm, progress=bool(cfg.get("progress", True)),
        cache_dir=str(out_dir / "cache" / "camera") if cfg.get("cache", True) else None,
        first_frame=int(cfg.get("first_frame", 0)),
    )

    def jobs(use_gt: bool) -> list[VideoJob]:
        return [VideoJob(r.sample_id, str(r.gt_video_path if use_gt else r.video_path), r.K[0], r.c2w,
                         first_frame=config.first_frame)
                for r in records if not use_gt or r.gt_video_path is not None]

    generated = evaluate_camera_accuracy(jobs(False), config, tag="video")
    if unusable:
        generated = _count_unusable(generated, unusable, config.trials)
    gt_result = evaluate_camera_accuracy(jobs(True), config, tag="gt") if reference and jobs(True) else None
    s, ref = generated["summary"], (gt_result or {}).get("summary", {})
    frames = f"frames {config.first_frame}..T-1 (docs/evaluation.md)" if config.first_frame else ""
    rows = [ResultRow(m, s[m], ref.get(m), better="lower",
                      note=frames if s[m] is not None else "not computed: SfM failed on every video")
            for m in CAMERA_METRICS]
    requested = {r.sample_id: r.c2w for r in records}
    wrong = wrong_trajectory_errors(generated["per_video"], requested)
    wrong_gt = wrong_trajectory_errors(gt_result["per_video"], requested) if gt_result else {}
    for m in CAMERA_METRICS:
        rows.append(ResultRow(
            f"{m}_wrong_traj", wrong[m], wrong_gt.get(m), better="higher",
            note=f"reference: the recovered cameras of {wrong['num_videos']} videos against other videos' "
                 "trajectories" if wrong[m] is not None else
                 "not computed: needs >= 2 videos and a successful SfM trial"))
    n_failed = s["num_videos_failed"]
    rows.append(ResultRow("CameraTrialFailureRate", s["trial_failure_rate"], ref.get("trial_failure_rate"),
                          better="lower", note=f"{s['num_trials']} SfM trials ({config.trials} per video)"))
    rows.append(ResultRow("CameraVideoFailureRate", s["video_failure_rate"], ref.get("video_failure_rate"),
                          better="lower", note=f"{n_failed}/{s['num_videos']} videos with no successful trial "
                          "(counted, not dropped; their errors are absent from the means)"))
    generated["wrong_trajectory"] = wrong
    _write_per_video(out_dir / "camera_per_video.csv", generated["per_video"], (gt_result or {}).get("per_video"))
    if int(cfg.get("plots", 16)) > 0:  # requested vs recovered cameras, out_dir/cameras/<sample>.png
        from camvid.evaluation.camera_plots import draw_requested_vs_recovered

        draw_requested_vs_recovered(records, generated["per_video"], out_dir / "cameras", int(cfg.get("plots", 16)))
    return rows, {"camera": generated, "camera_reference": gt_result}


def _count_unusable(result: dict, unusable: dict[str, str], trials: int) -> dict:
    """Unusable videos join the camera results as videos whose every trial failed, with the reason."""
    failed = [failed_video_result(sid, trials, reason) for sid, reason in unusable.items()]
    per_video = sorted(result["per_video"] + failed, key=lambda v: v["sample_id"])
    return {"summary": summarize_camera_results(per_video), "per_video": per_video}


def _write_failures(path: Path, unusable: dict[str, str], records: list[SampleRecord]) -> Path:
    """video_failures.csv: every video left out of the metrics, and why."""
    lines = ["sample_id,file,reason"]
    for sid, reason in sorted(unusable.items()):
        lines.append(f"{sid},video.mp4,{reason.replace(',', ' ')}")
    for r in records:
        if r.gt_problem:
            lines.append(f"{r.sample_id},{GT_VIDEO_FILE},{r.gt_problem.replace(',', ' ')}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _write_per_video(path: Path, per_video: list[dict], reference: list[dict] | None) -> None:
    ref = {v["sample_id"]: v for v in reference or []}
    lines = ["sample_id,trials_ok,trials,RotErr,TransErr,CamMC,gt_trials_ok,gt_RotErr,gt_TransErr,gt_CamMC,failures"]
    for v in per_video:
        r = ref.get(v["sample_id"], {})
        fmt = [("" if x is None else f"{x:.6g}") for x in
               (v["RotErr"], v["TransErr"], v["CamMC"], r.get("RotErr"), r.get("TransErr"), r.get("CamMC"))]
        reasons = "; ".join(sorted({t["reason"] for t in v["trials"] if not t["success"]})).replace(",", " ")
        lines.append(",".join([v["sample_id"], str(v["num_success"]), str(v["num_trials"]), *fmt[:3],
                               str(r.get("num_success", "")), *fmt[3:], reasons]))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


def _matcher_spec(spec, matchers: dict) -> dict:
    """``geometry.matcher``: a name under ``matchers`` (conf/eval.yaml) or a ``{_target_: ...}`` node."""
    if spec is None:
        return {"_target_": "camvid.evaluation.matching.SiftMatcher"}
    if isinstance(spec, str):
        if spec not in matchers:
            raise ValueError(f"geometry.matcher={spec!r}: not a matcher of conf/eval.yaml (known: "
                             f"{sorted(matchers)}); or give a node with _target_")
        return dict(matchers[spec])
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ValueError(f"geometry.matcher={spec!r}: give a name ({sorted(matchers)}) or a node with _target_")
    return spec


def _geometry_rows(records: list[SampleRecord], cfg: dict, reference: bool,
                   matchers: dict | None = None) -> tuple[list[ResultRow], dict]:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    spec = _matcher_spec(cfg.get("matcher"), matchers or {})
    try:
        matcher = instantiate(spec)
    except (InstantiationException, MissingWeights, ImportError) as err:
        # a learned matcher without its weight files (or kornia): the geometry rows say why
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if not isinstance(cause, (MissingWeights, ImportError)):
            raise
        log.warning("geometry metrics not computed: %s", cause)
        keys = _GEOMETRY_KEYS + [f"x{k}" for k in _GEOMETRY_KEYS]
        return _not_computed(keys, f"matcher {spec.get('_target_')}: {cause}", "higher"), {}
    config = GeometryConsistencyConfig(**{k: v for k, v in cfg.items() if k != "matcher"})
    gen_pairs, gt_pairs = [], []
    for r in records:
        gen_pairs += video_pairs(r.load_video(), r.K, r.c2w, matcher, config)
        gt = r.load_gt_video() if reference else None
        if gt is not None:
            gt_pairs += video_pairs(gt, r.K, r.c2w, matcher, config)
    gen, ref = summarize_pairs(gen_pairs), summarize_pairs(gt_pairs)
    rows = []
    for key in _GEOMETRY_KEYS:
        if gen["num_pairs"] == 0:
            rows += _not_computed([key], "no frame pairs with a camera baseline", "higher")
        else:
            rows.append(ResultRow(key, gen[key], ref.get(key), better="higher",
                                  note=f"{gen['num_pairs']} pairs (frame 0 vs t)"))
    groups = _groups(records)
    cross = []
    for members in groups.values():
        cross += cross_video_pairs([m.load_video() for m in members], [m.K for m in members],
                                   [m.c2w for m in members], matcher, config)
    xs = summarize_pairs(cross)
    for key in _GEOMETRY_KEYS:
        if not groups:
            rows += _not_computed([f"x{key}"], "no multi-view groups (meta.json 'group' with >= 2 views)", "higher")
        elif xs["num_pairs"] == 0:
            rows += _not_computed([f"x{key}"], "no cross-video frame pairs with a camera baseline", "higher")
        else:
            rows.append(ResultRow(f"x{key}", xs[key], better="higher",
                                  note=f"{xs['num_pairs']} cross-video pairs in {len(groups)} groups"))
    return rows, {"geometry": gen, "geometry_reference": ref, "geometry_cross_video": xs}


def _stack(videos: list[np.ndarray], what: str) -> np.ndarray:
    shapes = {v.shape for v in videos}
    if len(shapes) != 1:
        raise ValueError(f"{what}: videos differ in shape {sorted(shapes)}; FVD needs one size")
    return np.stack(videos)


def _fvd_rows(records: list[SampleRecord], cfg: dict, weights: dict, device: str) -> list[ResultRow]:
    from camvid.evaluation.networks.i3d import load_i3d, load_stylegan_i3d
    from camvid.evaluation.quality import FvdScorer

    rows = []
    with_gt = [r for r in records if r.gt_video_path is not None]
    for protocol in cfg.get("protocols", ["videogpt", "stylegan"]):
        name = f"FVD_{protocol}"
        if len(with_gt) < 2:
            rows += _not_computed([name], f"needs >= 2 samples with gt.mp4, found {len(with_gt)}", "lower")
            continue
        key = "i3d_videogpt" if protocol == "videogpt" else "i3d_stylegan"
        try:
            path = require_weights(key, weights.get(key))
            detector = (load_i3d if protocol == "videogpt" else load_stylegan_i3d)(path, map_location=device)
            scorer = FvdScorer(protocol, detector, device=device, batch_size=int(cfg.get("batch_size", 8)))
            fake = scorer.embed(_stack([r.load_video() for r in with_gt], "generated videos"))
            real = scorer.embed(_stack([r.load_gt_video() for r in with_gt], "GT videos"))
            from camvid.evaluation.quality import frechet_distance

            rows.append(ResultRow(name, frechet_distance(real, fake), better="lower",
                                  note=f"{len(with_gt)} videos vs their GT videos"))
        except (MissingWeights, ValueError) as err:
            log.warning("%s not computed: %s", name, err)
            rows += _not_computed([name], str(err), "lower")
    return rows


def _fid_rows(records: list[SampleRecord], cfg: dict, weights: dict, device: str) -> list[ResultRow]:
    from camvid.evaluation.networks.fid_inception import load_fid_inception
    from camvid.evaluation.quality import frame_fid_kid

    with_gt = [r for r in records if r.gt_video_path is not None]
    if not with_gt:
        return _not_computed(["FID", "KID"], "no gt.mp4 in any sample (the real frame set)", "lower")
    try:
        inception = load_fid_inception(require_weights("fid_inception", weights.get("fid_inception")),
                                       map_location=device)
        stride = int(cfg.get("frame_stride", 1))
        fake = np.concatenate([r.load_video()[::stride] for r in with_gt])
        real = np.concatenate([r.load_gt_video()[::stride] for r in with_gt])
        res = frame_fid_kid(real, fake, inception, device=device, batch_size=int(cfg.get("batch_size", 32)),
                            kid_subsets=int(cfg.get("kid_subsets", 100)),
                            kid_subset_size=int(cfg.get("kid_subset_size", 1000)))
    except (MissingWeights, ValueError) as err:
        log.warning("FID/KID not computed: %s", err)
        return _not_computed(["FID", "KID"], str(err), "lower")
    note = f"{len(fake)} generated vs {len(real)} GT frames"
    return [ResultRow("FID", res["FID"], better="lower", note=note),
            ResultRow("KID", res["KID"], better="lower", note=f"x100, std {res['KID_std']:.3g}; {note}")]


def _clip_rows(records: list[SampleRecord], cfg: dict, weights: dict, device: str) -> list[ResultRow]:
    from camvid.evaluation.quality import ClipScorer

    try:
        scorer = ClipScorer(require_weights("clip", weights.get("clip")), device=device,
                            batch_size=int(cfg.get("batch_size", 32)))
    except MissingWeights as err:
        log.warning("CLIP metrics not computed: %s", err)
        return _not_computed(["CLIP-T", "CLIP-F"], str(err), "higher")
    captioned = [r for r in records if r.caption.strip()]
    rows = []
    if captioned:
        value = float(np.mean([scorer.clip_t(r.load_video(), r.caption) for r in captioned]))
        rows.append(ResultRow("CLIP-T", value, better="higher", note=f"{len(captioned)} captioned videos"))
    else:
        rows += _not_computed(["CLIP-T"], "no sample has a caption", "higher")
    groups = _groups(records)
    if groups:
        value = float(np.mean([scorer.clip_f([m.load_video() for m in g]) for g in groups.values()]))
        rows.append(ResultRow("CLIP-F", value, better="higher", note=f"{len(groups)} multi-view groups"))
    else:
        rows += _not_computed(["CLIP-F"], "no multi-view groups (meta.json 'group' with >= 2 views)", "higher")
    return rows


def _attach_paper(rows: list[ResultRow], row_id: str | None) -> str | None:
    paper = paper_row(row_id)
    if paper is None:
        return None
    for r in rows:
        r.paper = paper["metrics"].get(r.metric)
    return f"{row_id}: {paper['source']}"


def _infer_paper_row(records: list[SampleRecord]) -> str | None:
    rows = {r.meta.get("paper_row") for r in records} - {None}
    return rows.pop() if len(rows) == 1 else None


def _log_wandb(cfg: dict, rows: list[ResultRow], title: str) -> None:
    import wandb

    run = wandb.init(project=cfg.get("project", "camvid"), entity=cfg.get("entity"), mode=cfg.get("mode", "offline"),
                     name=cfg.get("name") or title, job_type="eval", reinit="finish_previous")
    table = wandb.Table(columns=["metric", "ours", "gt_reference", "paper", "note"])
    for r in rows:
        table.add_data(r.metric, r.value, r.reference, r.paper, r.note)
    run.log({"eval/results": table, **{f"eval/{r.metric}": r.value for r in rows if r.value is not None}})
    run.finish()


# keys of an evaluation config that say where things are or go, not what is measured
_LOCATION_KEYS = ("samples_dir", "out_dir", "paths", "wandb")


def eval_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation measures and how (metrics, their options, weights, the paper row): the
    config less its locations, JSON-ready. results.json records it, so a rerun can tell whether
    results it finds were made with the same settings (``camvid.experiments.stages``)."""
    kept = {k: v for k, v in cfg.items() if k not in _LOCATION_KEYS}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def run_evaluation(cfg: dict[str, Any]) -> dict[str, Any]:
    """Evaluate ``cfg['samples_dir']``; write results.{md,csv,json} to ``cfg['out_dir']``."""
    samples_dir = Path(cfg["samples_dir"])
    all_records = read_samples(samples_dir)
    out_dir = Path(cfg.get("out_dir") or samples_dir / "eval")
    # One broken video never ends the run: it is left out of every metric, counted as a failed video
    # (camera), and named with its reason in video_failures.csv and camera_per_video.csv.
    unusable = screen_videos(all_records)
    records = [r for r in all_records if r.sample_id not in unusable]
    if not records:
        listing = "\n  ".join(f"{sid}: {why}" for sid, why in sorted(unusable.items()))
        raise ValueError(f"{samples_dir}: no usable video among {len(all_records)} samples:\n  {listing}")
    for sid, why in sorted(unusable.items()):
        log.warning("sample %s left out of every metric: %s", sid, why)
    failures_csv = (_write_failures(out_dir / "video_failures.csv", unusable, all_records)
                    if unusable or any(r.gt_problem for r in all_records) else None)
    reference = bool(cfg.get("reference", True))
    families = list(cfg.get("metrics", METRIC_FAMILIES))
    unknown = sorted(set(families) - set(METRIC_FAMILIES))
    if unknown:
        raise ValueError(f"eval.metrics: unknown families {unknown}; choose from {list(METRIC_FAMILIES)}")
    device = str(cfg.get("device", "cpu"))
    weights = dict(cfg.get("weights", {}))
    rows: list[ResultRow] = []
    details: dict[str, Any] = {}
    if "camera" in families:
        camera_rows, camera_details = _camera_rows(records, dict(cfg.get("camera", {})), out_dir, reference,
                                                   unusable)
        rows += camera_rows
        details.update(camera_details)
    if "camera_following" in families:  # synthetic data: exact depth (camvid.evaluation.camera_following)
        from camvid.evaluation.camera_following import evaluate_samples

        follow_rows, follow_details = evaluate_samples(records, out_dir)
        rows += follow_rows
        details.update(follow_details)
    if "geometry" in families:
        geo_rows, geo_details = _geometry_rows(records, dict(cfg.get("geometry", {})), reference,
                                               dict(cfg.get("matchers") or {}))
        rows += geo_rows
        details.update(geo_details)
    if "fvd" in families:
        rows += _fvd_rows(records, dict(cfg.get("fvd", {})), weights, device)
    if "fid_kid" in families:
        rows += _fid_rows(records, dict(cfg.get("fid_kid", {})), weights, device)
    if "clip" in families:
        rows += _clip_rows(records, dict(cfg.get("clip", {})), weights, device)
    if "identical_mse" in families:  # CVD appendix A.5 (camvid.evaluation.identical)
        from camvid.evaluation.identical import identical_trajectory_rows

        same_rows, same_details = identical_trajectory_rows(_groups(records))
        rows += same_rows
        details.update(same_details)

    row_id = cfg.get("paper_row") or _infer_paper_row(records)
    paper_source = _attach_paper(rows, row_id)
    if unusable:
        rows.append(ResultRow("UnusableVideos", float(len(unusable)), better="lower",
                              note=f"of {len(all_records)} samples: left out of every metric (camera: counted "
                              "as failed videos); reasons in video_failures.csv"))
    title = f"camvid evaluation of {samples_dir} ({len(all_records)} samples)"
    extra = {"samples_dir": str(samples_dir), "num_samples": len(all_records), "paper_row": row_id,
             "unusable_videos": unusable,
             "unusable_gt_videos": {r.sample_id: r.gt_problem for r in all_records if r.gt_problem},
             "settings": eval_settings(cfg),
             "details": json.loads(json.dumps(details, default=lambda o: None))}
    paths = write_tables(out_dir, rows, extra, title, paper_source)
    if failures_csv is not None:
        paths["video_failures"] = failures_csv
    wandb_cfg = dict(cfg.get("wandb") or {})
    if wandb_cfg.get("enabled"):
        _log_wandb(wandb_cfg, rows, title)
    return {"rows": rows, "paths": paths, "markdown": paths["md"].read_text(), "details": details}
