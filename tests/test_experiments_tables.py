"""``make table``: finished jobs of a table sweep in the paper's layout, beside the paper's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from camvid.evaluation.tables import ResultRow
from camvid.experiments.tables import TINY_COLUMNS, collect_table, main
from conftest import REPO, compose


def _job(root: Path, preset: str, seed: int, values: dict, not_computed: dict | None = None,
         references: dict | None = None):
    rows = [ResultRow(m, v, (references or {}).get(m)) for m, v in values.items()]
    rows += [ResultRow(m, None, note=f"not computed: {why}") for m, why in (not_computed or {}).items()]
    out = root / preset / f"seed_{seed}" / "samples" / "eval"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows]}))


def test_table_from_finished_jobs(tmp_path):
    root = tmp_path / "cami2v_t2"
    missing_fvd = {"FVD_videogpt": "weight file i3d_pretrained_400.pt missing",
                   "FVD_stylegan": "weight file i3d_torchscript.pt missing"}
    _job(root, "cami2v_t2_cami2v", 1, {"TransErr": 1.0, "RotErr": 0.5, "CamMC": 2.0}, missing_fvd)
    _job(root, "cami2v_t2_cami2v", 2, {"TransErr": 2.0, "RotErr": 0.5, "CamMC": 2.0}, missing_fvd)
    _job(root, "cami2v_t2_full3d", 1, {"TransErr": 1.8215, "RotErr": 0.7, "CamMC": 2.5, "FVD_videogpt": 70.0,
                                      "FVD_stylegan": 60.0})
    spec, rows = collect_table("cami2v_t2", root)
    by = {r.preset: r for r in rows}
    cami2v = by["cami2v_t2_cami2v"]
    assert cami2v.seeds == ["seed_1", "seed_2"] and cami2v.paper_row == "cami2v_t1_cami2v"
    trans = cami2v.cells["TransErr"]
    assert trans.mean == pytest.approx(1.5) and trans.std == pytest.approx(0.7071, abs=1e-4)
    assert trans.paper == pytest.approx(1.4955) and trans.rel_diff == pytest.approx((1.5 - 1.4955) / 1.4955)
    assert "2/2 seeds" in cami2v.cells["FVD_videogpt"].note and "i3d_pretrained_400.pt" in cami2v.cells["FVD_videogpt"].note
    assert by["cami2v_t2_full3d"].cells["TransErr"].rel_diff == pytest.approx(0.0)
    assert "no finished job" in by["cami2v_t2_camco_like"].cells["RotErr"].note
    row5 = by["cami2v_t2_epipolar_only"]  # the paper's row 5, read as epipolar attention without Plücker
    assert row5.cells["TransErr"].paper == pytest.approx(5.5119) and "no finished job" in row5.cells["TransErr"].note
    _, cvd_rows = collect_table("cvd_t1", tmp_path / "cvd_t1")  # a row without a preset says why
    reference = next(r for r in cvd_rows if r.preset is None)
    assert reference.label == "RE10K Reference" and "not run" in reference.cells["RotAUC@5"].note

    paths = main(["cami2v_t2", "--root", str(root)])
    md = paths["md"].read_text()
    assert "| TransErr ours | TransErr paper | TransErr Δ |" in md.replace("row | seeds | ", "")
    line = next(x for x in md.splitlines() if x.startswith("| Plücker + Epipolar (CamI2V) |"))
    assert "| 2 | 1.5 ± 0.7071 | 1.496 | +0.3% |" in line
    assert "i3d_torchscript.pt missing" in md and "Epipolar only (row 5, read from the paper)" in md
    # the paper's row order, one line each
    labels = [x.split(" | ")[0][2:] for x in md.splitlines() if x.startswith("| ") and " | paper" not in x]
    assert labels[1:] == [r["label"] for r in spec["rows"]]
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("row,preset,paper_row,metric,ours_mean,ours_std,num_seeds,paper,rel_diff,note")
    assert len(csv_lines) == 1 + len(spec["rows"]) * len(spec["columns"])


def _following(psnr: float) -> tuple[dict, dict]:
    """One tiny job's results: the camera-following family (GT reference on CamFollowPSNR and
    CamFollowPSNR_static, as camvid.evaluation.camera_following writes them) and the SfM errors."""
    values = {"CamFollowPSNR": psnr, "CamFollowL1": 0.1, "CamFollowPSNR_static": 14.0,
              "CamFollowPSNR_wrong_traj": psnr - 2.0, "FirstFramePSNR": 30.0, "RotErr": 2.0, "TransErr": 4.0,
              "CamMC": 5.0}
    return values, {"CamFollowPSNR": 24.5, "CamFollowPSNR_static": 24.5}


def test_tiny_table_shows_camera_following_beside_the_paper(tmp_path):
    # two rows of CamI2V Table 1 at one seed, as `python src/train.py -m table=cami2v_t1 scale=tiny
    # experiment=cami2v_t1_dynamicrafter,cami2v_t1_cami2v seed=1` leaves them
    root = tmp_path / "cami2v_t1"
    for preset, psnr in (("cami2v_t1_dynamicrafter", 15.0), ("cami2v_t1_cami2v", 18.25)):
        values, refs = _following(psnr)
        _job(root, preset, 1, values, {"FVD_videogpt": "weights missing"}, refs)
    spec, rows = collect_table("cami2v_t1", root, scale="tiny")
    assert spec["columns"][:len(TINY_COLUMNS)] == list(TINY_COLUMNS)
    assert spec["columns"][len(TINY_COLUMNS):] == ["TransErr", "RotErr", "CamMC", "FVD_videogpt", "FVD_stylegan"]
    by = {r.preset: r for r in rows}
    cami2v = by["cami2v_t1_cami2v"]
    assert cami2v.seeds == ["seed_1"] and cami2v.cells["CamFollowPSNR"].mean == pytest.approx(18.25)
    assert cami2v.cells["CamFollowPSNR_gt"].mean == pytest.approx(24.5)  # the GT videos' reference
    assert cami2v.cells["CamFollowPSNR_wrong_traj"].mean == pytest.approx(16.25)
    assert cami2v.cells["CamFollowMargin"].mean == pytest.approx(18.25 - 16.25)  # paired per job
    assert cami2v.cells["CamFollowPSNR"].paper is None and cami2v.cells["RotErr"].paper == pytest.approx(0.4758)
    assert "no finished job" in by["cami2v_t1_motionctrl"].cells["CamFollowPSNR"].note

    md = main(["cami2v_t1", "--scale", "tiny", "--root", str(root)])["md"].read_text()
    head = next(x for x in md.splitlines() if x.startswith("| row | seeds |"))
    assert head.startswith("| row | seeds | CamFollowPSNR ours | CamFollowPSNR paper | CamFollowPSNR Δ | "
                           "CamFollowPSNR_gt ours |") and "| FirstFramePSNR ours |" in head
    assert "| TransErr ours | TransErr paper |" in head
    line = next(x for x in md.splitlines() if x.startswith("| + CamI2V (Ours) |"))
    # ours at one seed, "—" where the paper has no such column, the paper's RotErr beside ours
    assert line.startswith("| + CamI2V (Ours) | 1 | 18.25 | — |  | 24.5 | — |") and "| 2 | 0.4758 |" in line
    dyn = next(x for x in md.splitlines() if x.startswith("| DynamiCrafter |"))
    assert dyn.startswith("| DynamiCrafter | 1 | 15 | — |") and "3.341" in dyn
    # the full-scale table of the same jobs keeps the paper's columns only
    full = main(["cami2v_t1", "--root", str(root), "--out", str(tmp_path / "full")])["md"].read_text()
    assert "CamFollowPSNR" not in full and "TransErr ours" in full


@pytest.mark.parametrize("preset", ["cami2v_t1_dynamicrafter", "cami2v_t1_cami2v", "cvd_t3_cvd"])
def test_tiny_rows_learn_with_the_tiny_recipe(preset):
    demo = compose(["experiment=demo"])
    row = compose(["table=cami2v_t1", "scale=tiny", f"experiment={preset}"])
    family = "animatediff" if preset.startswith("cvd") else "dynamicrafter"
    tiny = compose([f"backbone=tiny_{family}"]).backbone
    assert row.backbone.name == f"tiny_{family}" and row.stages == ["train", "sample", "eval"]
    assert row.backbone.kwargs == tiny.kwargs  # DynamiCrafter: x0-prediction, clean first frame
    assert row.model.sampler == tiny.sampler and row.model.guidance == tiny.guidance
    assert "camera_following" in row.stage_eval.metrics and row.stage_sample.steps is None
    # the papers' SfM columns with the tiny world's settings (docs/evaluation.md), as the demo evaluates
    assert "camera" in row.stage_eval.metrics and row.stage_eval.camera.first_frame == 1
    assert row.stage_eval.camera.sfm.peak_threshold == 0.002 and row.stage_eval.camera.sfm.upscale == 8
    # the demo's data and clip shape
    for key in ("trainer.batch_size", "backbone.num_frames", "backbone.height", "backbone.width",
                "model.rand_cond_frame", "data.stride_train", "data.stride_eval"):
        assert OmegaConf.select(row, key) == OmegaConf.select(demo, key), key
    # the tables' own recipe (docs/diffusion.md "The tiny CPU recipe"; the demo freezes the base since)
    assert row.model.train_base is True and row.model.optimizer.lr == 1e-3
    assert list(row.model.train_timesteps) == [200, 999] and row.trainer.max_steps == 750
    if family == "dynamicrafter":
        assert row.backbone.kwargs.parameterization == "x0" and row.model.sampler.steps == 25
        # sampled with CamI2V's camera guidance, a sample-time setting (the demo samples unguided)
        assert row.stage_sample.guidance.camera_scale == 3.0 and demo.model.guidance.camera_scale == 0.0
    else:
        assert row.model.name == "cvd" and row.stage_sample.guidance is None


@pytest.mark.parametrize("preset", ["cami2v_t1_dynamicrafter", "cami2v_t1_cameractrl", "cvd_t3_cvd"])
def test_tiny_frozen_rows_train_with_the_demo_recipe(preset):
    from camvid.diffusion.losses import CondDropout
    from camvid.experiments.stages import _nothing_to_train

    demo = compose(["experiment=demo"])
    row = compose(["table=cami2v_t1", "scale=tiny_frozen", f"experiment={preset}"])
    tiny = compose(["table=cami2v_t1", "scale=tiny", f"experiment={preset}"])
    assert row.scale_name == "tiny_frozen" and row.stage_sample.num_samples == 32
    assert row.trainer.max_steps == 1000 and row.backbone.name == tiny.backbone.name
    if preset.startswith("cvd"):  # no tiny AnimateDiff base to freeze: scale=tiny's recipe
        for key in ("model.train_base", "model.optimizer.lr", "model.train_timesteps", "stage_sample.guidance",
                    "stage_sample.steps"):
            assert OmegaConf.select(row, key) == OmegaConf.select(tiny, key), key
        drop = CondDropout.from_config
        assert drop(OmegaConf.to_container(row.backbone.cond_dropout, resolve=True)) == drop(tiny.backbone.cond_dropout)
        assert not _nothing_to_train(row)
        return
    # the demo's training and sampling recipe (conf/experiment/demo.yaml)
    for key in ("model.train_base", "model.optimizer.lr", "model.train_timesteps", "backbone.cond_dropout",
                "backbone.pretrained", "model.rand_cond_frame", "trainer.batch_size", "data.stride_train"):
        assert OmegaConf.select(row, key) == OmegaConf.select(demo, key), key
    assert row.stage_sample.steps == demo.backbone.sampler.steps == 12
    assert row.stage_sample.guidance.camera_scale == demo.backbone.guidance.camera_scale == 0.0
    # the no-camera row has nothing to train on the frozen base: the zero-shot row; at scale=tiny it trains
    assert _nothing_to_train(row) is (preset == "cami2v_t1_dynamicrafter")
    assert not _nothing_to_train(tiny)


def test_tiny_frozen_no_camera_row_samples_the_frozen_base_without_training(tmp_path):
    env = _env(tmp_path)
    job = ["src/train.py", "table=cami2v_t1", "scale=tiny_frozen", "experiment=cami2v_t1_dynamicrafter", "seed=1",
           *TINY_JOB, "stage_eval.metrics=[camera_following]"]
    done = _run(job, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "nothing trains: stage skipped, the pretrained base is sampled as it is" in done.stdout
    run = tmp_path / "outputs" / "tables" / "tiny_frozen" / "cami2v_t1" / "cami2v_t1_dynamicrafter" / "seed_1"
    assert not (run / "checkpoints").exists()
    results = json.loads((run / "samples" / "eval" / "results.json").read_text())
    assert any(r["metric"] == "CamFollowPSNR" and r["value"] is not None for r in results["rows"])


def test_unknown_table_is_named():
    with pytest.raises(FileNotFoundError, match="TABLE=nope: .*known tables: .*cami2v_t2"):
        collect_table("nope", Path("/nonexistent"))


def _run(args, env, timeout=1500):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), CAMVID_ROOT=str(tmp_path), WANDB_MODE="offline",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("CAMVID_SWEEP_ID", None)
    return env


TINY_JOB = ["trainer.max_steps=2", "trainer.ckpt_every=2", "backbone.num_frames=8", "backbone.height=32",
            "backbone.width=32", "stage_sample.num_samples=2", "stage_sample.steps=2", "logger=none",
            "data.prepare.num_clips=6", "data.prepare.webvid_clips=2"]


@pytest.mark.slow
def test_two_row_table_through_submitit_local_and_make_table(tmp_path):
    env = _env(tmp_path)
    sweep = ["src/train.py", "-m", "table=cami2v_t2", "scale=tiny", "hydra/launcher=submitit_local",
             "experiment=cami2v_t2_camco_like,cami2v_t2_pluecker_only", *TINY_JOB]
    done = _run(sweep, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = tmp_path / "outputs" / "tables" / "tiny" / "cami2v_t2"
    for preset in ("cami2v_t2_camco_like", "cami2v_t2_pluecker_only"):
        job = root / preset / "seed_42"
        assert (job / "checkpoints" / "step_00000002").is_dir()
        metas = [json.loads(p.read_text()) for p in job.glob("samples/*/meta.json")]
        assert 1 <= len(metas) <= 2 and {m["paper_row"] for m in metas} == {preset}
        assert (job / "samples" / "eval" / "results.json").is_file()
    table = _run(["-m", "camvid.experiments.tables", "cami2v_t2", "--scale", "tiny"], env)
    assert table.returncode == 0, table.stderr[-3000:]
    md = (root / "table.md").read_text()
    assert "TransErr paper" in md and "1.601" in md  # the CamCo-like row's published TransErr
    for label in ("Plücker + Epipolar on ref. frame (CamCo-like)", "Plücker only"):
        assert f"| {label} | 1 |" in md  # one finished seed each
    assert "no finished job under" in md  # the rows not swept here
    # rerunning the same command resumes: every stage of every job is skipped
    again = _run(sweep, env)
    assert again.returncode == 0
    logs = "".join(p.read_text() for p in root.glob(".submitit/*/*_log.out"))
    assert "stage skipped" in logs


@pytest.mark.slow
def test_two_task_submitit_job_forms_one_process_group_with_disjoint_data(tmp_path):
    env = _env(tmp_path)
    done = _run(["src/train.py", "-m", "experiment=cami2v_t2_camco_like", "scale=tiny", "hydra/launcher=submitit_local",
                 "hydra.launcher.tasks_per_node=2", "stages=[train]", "trainer.log_sample_keys=true", *TINY_JOB], env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = next((tmp_path / "outputs" / "train" / "multiruns").glob("*/0"))
    keys = [json.loads((run / "sample_keys" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    flat = [{k for batch in ks for k in batch} for ks in keys]
    assert flat[0] and flat[1] and not flat[0] & flat[1]  # two ranks of one group, disjoint data
    state = json.loads((run / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["resume"]["world_size"] == 2


def test_cvd_table2_joins_its_two_sample_sets(tmp_path):
    """CVD Table 2: CLIP on the WebVid-prompt samples, FID / KID on the RealEstate10K set
    (``stage_sample.sets.re10k`` -> ``samples_re10k/eval``), one row per method."""
    from camvid.experiments.stages import eval_config, sample_sets

    cfg = compose(["experiment=cvd_t2_cvd"])
    sets = sample_sets(cfg)
    assert [name for name, _, _ in sets] == ["samples", "samples_re10k"]
    assert sets[0][1].protocol.prompts == "webvid" and sets[0][1].num_samples == 1000
    assert sets[1][1].protocol.prompts == "test" and sets[1][2] == {"metrics": ["fid_kid"]}
    assert eval_config(cfg, tmp_path, sets[1][2], sets[1][1])["metrics"] == ["fid_kid"]
    assert eval_config(cfg, tmp_path, sets[0][2], sets[0][1])["metrics"] == ["clip"]
    a5 = compose(["experiment=cvd_a5_cameractrl", "scale=tiny"])  # tiny's metric families + the A.5 measure
    assert eval_config(a5, tmp_path)["metrics"][-1] == "identical_mse"

    root = tmp_path / "cvd_t2"
    _job(root, "cvd_t2_cvd", 1, {"CLIP-T": 0.31, "CLIP-F": 0.9}, {"FID": "no gt.mp4 in any sample", "KID": "x"})
    fid = root / "cvd_t2_cvd" / "seed_1" / "samples_re10k" / "eval"
    fid.mkdir(parents=True)
    fid_rows = [ResultRow("FID", 30.0), ResultRow("KID", 0.5), ResultRow("CLIP-F", None, note="not computed: x")]
    (fid / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in fid_rows]}))
    _, rows = collect_table("cvd_t2", root)
    cvd = next(r for r in rows if r.preset == "cvd_t2_cvd")
    assert {c: cvd.cells[c].mean for c in ("CLIP-T", "CLIP-F", "FID", "KID")} == \
        {"CLIP-T": 0.31, "CLIP-F": 0.9, "FID": 30.0, "KID": 0.5}
    assert all(not cvd.cells[c].note for c in ("CLIP-T", "CLIP-F", "FID", "KID"))
    assert cvd.cells["FID"].paper == pytest.approx(32.90)


@pytest.mark.slow
def test_cvd_table2_job_samples_both_sets_and_the_table_joins_them(tmp_path):
    """One CVD Table 2 row at tiny size through train -> sample -> eval: WebVid-prompt pairs of the
    single-video CameraCtrl as groups, the RealEstate10K set beside them, both in make table."""
    env = _env(tmp_path)
    job = ["src/train.py", "-m", "table=cvd_t2", "scale=tiny", "experiment=cvd_t2_cameractrl", *TINY_JOB]
    done = _run(job, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seed = tmp_path / "outputs" / "tables" / "tiny" / "cvd_t2" / "cvd_t2_cameractrl" / "seed_42"
    pairs = [json.loads(p.read_text()) for p in seed.glob("samples/*/meta.json")]
    single = [json.loads(p.read_text()) for p in seed.glob("samples_re10k/*/meta.json")]
    assert pairs and len(pairs) == 2 * len(single)
    captions = (tmp_path / "data" / "synthetic" / "webvid" / "webvid.csv").read_text()
    for m in pairs:
        assert m["group"] and m["protocol"]["prompts"] == "webvid" and m["caption"] in captions
        assert m["protocol"]["pair_sampling"] == "independent"
    assert all(m["group"] is None and m["protocol"]["prompts"] == "test" for m in single)
    assert (seed / "samples" / "eval" / "results.json").is_file()
    assert (seed / "samples_re10k" / "eval" / "results.json").is_file()
    table = _run(["-m", "camvid.experiments.tables", "cvd_t2", "--scale", "tiny"], env)
    assert table.returncode == 0, table.stderr[-3000:]
    md = (seed.parents[1] / "table.md").read_text()
    assert "pt_inception-2015-12-05-6726825d.pth" in md  # FID / KID: the RealEstate10K set's own reason


def _tiny_table_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_table", REPO / "scripts" / "tiny_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_table_script_lists_every_row_and_seed_and_names_bad_rows():
    script = _tiny_table_script()
    jobs = script.jobs_of("cami2v_t1", [1, 2], None)
    presets = ["cami2v_t1_dynamicrafter", "cami2v_t1_motionctrl", "cami2v_t1_cameractrl", "cami2v_t1_cami2v"]
    assert jobs == [(p, s) for s in (1, 2) for p in presets]
    assert script.jobs_of("cami2v_t1", [3], ["cami2v_t1_cami2v"]) == [("cami2v_t1_cami2v", 3)]
    with pytest.raises(SystemExit, match="cami2v_t2_full3d: not a row preset of table cami2v_t1"):
        script.jobs_of("cami2v_t1", [1], ["cami2v_t2_full3d"])
    with pytest.raises(SystemExit):
        script.main(["cami2v_t1", "--lanes", "0"])
    with pytest.raises(SystemExit):
        script.main(["cami2v_t1", "--seeds", "1", "not-an-override"])


@pytest.mark.slow
def test_tiny_table_script_runs_two_rows_side_by_side_and_renders_the_table(tmp_path):
    env = _env(tmp_path)
    done = _run(["scripts/tiny_table.py", "cami2v_t2", "--seeds", "1", "--lanes", "2", "--rows",
                 "cami2v_t2_camco_like", "cami2v_t2_pluecker_only", *TINY_JOB], env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = tmp_path / "outputs" / "tables" / "tiny" / "cami2v_t2"
    md = (root / "table.md").read_text()
    for label in ("Plücker + Epipolar on ref. frame (CamCo-like)", "Plücker only"):
        line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
        assert line.startswith(f"| {label} | 1 |"), line  # one finished seed in the row
    cami2v = next(x for x in md.splitlines() if x.startswith("| Plücker + Epipolar (CamI2V) |"))
    assert cami2v.startswith("| Plücker + Epipolar (CamI2V) | 0 |")  # not asked for: no job
    assert (root / "logs" / "cami2v_t2_camco_like.seed_1.log").is_file()


def test_camera_following_margin_is_paired_within_each_seed(tmp_path):
    root = tmp_path / "cami2v_t1"
    # two seeds whose scores move together: the margin's spread is far below the scores' spread
    _job(root, "cami2v_t1_cami2v", 1, {"CamFollowPSNR": 20.0, "CamFollowPSNR_wrong_traj": 19.5})
    _job(root, "cami2v_t1_cami2v", 2, {"CamFollowPSNR": 22.0, "CamFollowPSNR_wrong_traj": 21.3})
    _job(root, "cami2v_t1_dynamicrafter", 1, {"CamFollowPSNR": 21.0})  # no wrong-trajectory reference
    _, rows = collect_table("cami2v_t1", root, scale="tiny")
    by = {r.preset: r for r in rows}
    margin = by["cami2v_t1_cami2v"].cells["CamFollowMargin"]
    assert margin.values == pytest.approx([0.5, 0.7])
    assert margin.std < by["cami2v_t1_cami2v"].cells["CamFollowPSNR"].std
    missing = by["cami2v_t1_dynamicrafter"].cells["CamFollowMargin"]
    assert missing.mean is None and "did not report it" in missing.note
