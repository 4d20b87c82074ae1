"""src/evaluate.py end to end on a tiny sample folder: the table, "not computed" rows, paper rows."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from camvid.evaluation.layout import write_sample
from camvid.evaluation.pipeline import run_evaluation
from camvid.evaluation.tables import load_paper_numbers

REPO = Path(__file__).resolve().parents[1]
H = W = 96
T = 6


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from camvid.data.synthetic import default_intrinsics, make_scene, make_trajectory, render_frames

    root = tmp_path_factory.mktemp("samples")
    K = default_intrinsics(H, W)
    scene = make_scene(3)
    for view, kind in enumerate(("orbit", "truck")):
        c2w = make_trajectory(kind, T, 1)
        c2w = np.linalg.inv(c2w[0])[None] @ c2w  # both views start at one camera, like a folded CVD pair
        video, _ = render_frames(scene, K, c2w, H, W)
        write_sample(root, f"scene3_view{view}", video, K, c2w, "a room", 0, gt_video=video,
                     meta={"group": "scene3", "view": view, "method": "reference", "paper_row": "cami2v_t1_cami2v"})
    return root


def _cfg(samples, out, **kw):
    cfg = {
        "samples_dir": str(samples), "out_dir": str(out), "device": "cpu", "reference": False,
        "metrics": ["camera", "geometry", "fvd", "fid_kid", "clip"],
        "camera": {"trials": 1, "progress": False},
        "geometry": {"matcher": {"_target_": "camvid.evaluation.matching.SiftMatcher", "max_num_features": 1024}},
        "weights": {"i3d_videogpt": str(samples / "missing" / "i3d_pretrained_400.pt"), "i3d_stylegan": None,
                    "fid_inception": None, "clip": None},
    }
    cfg.update(kw)
    return cfg


def test_camera_rows_from_a_later_first_frame(samples, tmp_path):
    cfg = _cfg(samples, tmp_path, metrics=["camera"], camera={"trials": 1, "progress": False, "first_frame": 1,
                                                             "sfm": {"peak_threshold": 0.004}})
    rows = {r.metric: r for r in run_evaluation(cfg)["rows"]}
    assert rows["RotErr"].value < 0.3 and "frames 1..T-1" in rows["RotErr"].note
    assert rows["RotErr_wrong_traj"].value > 3 * rows["RotErr"].value
    assert "2 videos" in rows["RotErr_wrong_traj"].note
    # the requested-vs-recovered plots take the same frames
    assert sorted(p.name for p in (tmp_path / "cameras").glob("*.png")) == ["scene3_view0.png", "scene3_view1.png"]
    cached = json.loads(next((tmp_path / "cache" / "camera" / "video").glob("*.json")).read_text())
    assert cached["result"]["first_frame"] == 1 and cached["result"]["num_frames"] == T - 1


def test_full_table_with_missing_weights(samples, tmp_path):
    result = run_evaluation(_cfg(samples, tmp_path, reference=True))
    rows = {r.metric: r for r in result["rows"]}
    # the GT videos are scored too (the reference column), by camera SfM and by the matcher
    assert rows["RotErr"].reference is not None and rows["Precision"].reference is not None
    for m in ("RotErr", "TransErr", "CamMC", "RotAUC@5", "TransAUC@20", "Precision", "MatchingScore",
              "xRotAUC@5", "xPrecision"):
        assert rows[m].value is not None, m
    assert rows["RotErr"].value < 0.3  # GT-rendered videos: cameras recovered
    # the wrong-trajectory reference: the recovered cameras against the other video's requested path
    for m in ("RotErr", "TransErr", "CamMC"):
        wrong = rows[f"{m}_wrong_traj"]
        assert wrong.value > 3 * rows[m].value and wrong.reference is not None and wrong.better == "higher", m
    # every metric of both papers has a row; those without weights say so, with no number
    for m in ("FVD_videogpt", "FVD_stylegan", "FID", "KID", "CLIP-T", "CLIP-F"):
        assert rows[m].value is None and rows[m].note.startswith("not computed"), m
    assert "i3d_pretrained_400.pt" in rows["FVD_videogpt"].note
    assert "pytorch-fid" in rows["FID"].note
    # the paper row comes from meta.json
    assert rows["RotErr"].paper == pytest.approx(0.4758)
    md = (tmp_path / "results.md").read_text()
    assert "not computed" in md and "| RotErr ↓ |" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["paper_row"] == "cami2v_t1_cami2v"
    assert (tmp_path / "results.csv").read_text().startswith("metric,value")
    per_video = (tmp_path / "camera_per_video.csv").read_text().splitlines()
    assert len(per_video) == 3 and per_video[1].split(",")[6] == "1"  # gt_trials_ok of the first sample
    # requested vs recovered cameras of every video, drawn by the trajectory viewer
    assert len(list((tmp_path / "cameras").glob("*.png"))) == 2


def test_unknown_options_fail_clearly(samples, tmp_path):
    with pytest.raises(ValueError, match="unknown families"):
        run_evaluation(_cfg(samples, tmp_path, metrics=["camera", "lpips"]))
    with pytest.raises(ValueError, match="unknown paper row"):
        run_evaluation(_cfg(samples, tmp_path, metrics=[], paper_row="cami2v_t9"))


def test_paper_numbers_cover_both_papers_tables():
    table = load_paper_numbers()
    assert table["cami2v_t1_cami2v"]["metrics"]["RotErr"] == pytest.approx(0.4758)
    assert table["cvd_t1_re10k_cvd"]["metrics"]["RotAUC@5"] == pytest.approx(55.5)
    assert table["cvd_t2_cvd"]["metrics"]["KID"] == pytest.approx(0.61)
    metrics = {m for row in table.values() for m in row["metrics"]}
    assert {"TransErr", "RotErr", "CamMC", "FVD_videogpt", "FVD_stylegan", "FID", "KID", "CLIP-T", "CLIP-F",
            "Precision", "MatchingScore", "xRotAUC@5"} <= metrics


def test_hydra_entry_point_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["samples_dir=/x", "camera.trials=2", "paths.weights_dir=/w"])
    assert cfg.camera.trials == 2 and cfg.camera.sfm.mapper == "global"
    assert cfg.weights.fid_inception == "/w/eval/pt_inception-2015-12-05-6726825d.pth"


@pytest.mark.slow
def test_cli_prints_the_table(samples, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "src" / "evaluate.py"), f"samples_dir={samples}", f"out_dir={tmp_path}", "reference=false",
         "metrics=[camera,fvd]", "camera.trials=1", "camera.progress=false", f"hydra.run.dir={tmp_path}/hydra"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    assert "| RotErr ↓ |" in out.stdout and "not computed" in out.stdout


@pytest.mark.slow
def test_quality_metrics_through_the_pipeline_with_local_weights(samples, tmp_path, monkeypatch):
    import torch

    from camvid.evaluation.networks.fid_inception import FidInceptionV3
    from camvid.evaluation.networks.i3d import InceptionI3d
    from test_eval_quality import _signal_preserving_init, _tiny_clip, _TinyStyleganDetector

    torch.manual_seed(0)
    weights = {"i3d_videogpt": tmp_path / "i3d_pretrained_400.pt", "i3d_stylegan": tmp_path / "i3d_torchscript.pt",
               "fid_inception": tmp_path / "pt_inception.pth", "clip": _tiny_clip(tmp_path)}
    torch.save(_signal_preserving_init(InceptionI3d(), 0).state_dict(), weights["i3d_videogpt"])
    torch.jit.script(_TinyStyleganDetector()).save(str(weights["i3d_stylegan"]))
    torch.save(_signal_preserving_init(FidInceptionV3(), 0).state_dict(), weights["fid_inception"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = _cfg(samples, tmp_path / "out", metrics=["fvd", "fid_kid", "clip"],
               weights={k: str(v) for k, v in weights.items()},
               fid_kid={"frame_stride": 2, "kid_subsets": 3, "kid_subset_size": 3},
               wandb={"enabled": True, "project": "camvid-test", "mode": "offline"})
    rows = {r.metric: r for r in run_evaluation(cfg)["rows"]}
    # the GT videos are the generated videos here, so every distance is ~0 and the CLIP-F pair is two views
    for m in ("FVD_videogpt", "FVD_stylegan", "FID"):
        assert rows[m].value is not None and abs(rows[m].value) < 1e-3, m
    assert rows["KID"].value is not None
    assert -1 <= rows["CLIP-T"].value <= 1 and -1 <= rows["CLIP-F"].value <= 1
