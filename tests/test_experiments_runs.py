"""Stages, split sampling, preemption and the SLURM environment mapping of camvid.experiments."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from camvid.experiments.cluster import distributed_env, export_distributed_env
from camvid.sampling import eval_split_dataset, sample_test_clip, shard_indices
from camvid.training.checkpoint import WEIGHTS_NAME
from conftest import TINY_DATA, compose, run_overrides


def test_shards_are_disjoint_and_cover_the_split():
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert not set(shards[0]) & set(shards[1])
    with pytest.raises(ValueError, match="shard_index=3 / num_shards=3"):
        shard_indices(11, 3, 3)


def test_distributed_env_from_a_submitit_job(monkeypatch):
    env = distributed_env(3, 1, 4, 2, "node7", "12345")
    assert env["RANK"] == "3" and env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == "4"
    assert env["LOCAL_WORLD_SIZE"] == "2" and env["MASTER_ADDR"] == "node7"
    assert distributed_env(0, 0, 4, 2, "node7", "12345")["MASTER_PORT"] == env["MASTER_PORT"]  # tasks agree
    # a 2-task submitit_local job, task 1: what accelerate's env:// rendezvous needs
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(k, "unset")  # recorded, so the variables set below are removed after the test
        monkeypatch.delenv(k)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    for k, v in {"SUBMITIT_LOCAL_JOB_ID": "777", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
                 "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}.items():
        monkeypatch.setenv(k, v)
    values = export_distributed_env()
    assert values is not None and os.environ["RANK"] == "1" and os.environ["WORLD_SIZE"] == "2"
    assert os.environ["LOCAL_RANK"] == "1" and os.environ["MASTER_PORT"].isdigit()
    # a launcher that set the variables already (accelerate launch, torchrun) is left alone
    assert export_distributed_env() is None


def test_split_sampling_writes_each_sample_once_and_equals_one_process(data_root, tmp_path):
    from camvid.evaluation.layout import read_samples, read_video
    from camvid.models.registry import build_method

    cfg = compose(["experiment=cami2v_t2_camco_like", "scale=tiny", *TINY_DATA, *run_overrides(data_root, tmp_path),
                   "data=synthetic"])
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    dataset = eval_split_dataset(cfg, str(data_root))
    n = min(3, len(dataset))
    kw = dict(base_seed=5, ckpt="random-init", steps=2)
    single, split = tmp_path / "single", tmp_path / "split"
    for idx in range(n):
        sample_test_clip(method, cfg, dataset, idx, single, **kw)
    for rank in (1, 0):  # two ranks, in any order
        for idx in shard_indices(n, rank, 2):
            sample_test_clip(method, cfg, dataset, idx, split, **kw)
    a, b = read_samples(single), read_samples(split)
    assert [r.sample_id for r in a] == [r.sample_id for r in b] and len(a) == n
    for ra, rb in zip(a, b):
        assert np.array_equal(read_video(ra.video_path), read_video(rb.video_path))
        assert ra.seed == rb.seed and rb.meta["paper_row"] == "cami2v_t2_camco_like"
    # a rerun skips finished samples: nothing is written again
    before = {p: p.stat().st_mtime_ns for p in split.glob("*/video.mp4")}
    assert all(sample_test_clip(method, cfg, dataset, i, split, **kw) == [] for i in range(n))
    assert before == {p: p.stat().st_mtime_ns for p in split.glob("*/video.mp4")}
    # the guidance is recorded; a rerun asking for another one is refused, nothing overwritten
    assert a[0].meta["guidance"]["camera_scale"] == 0.0
    with pytest.raises(ValueError, match="was sampled with guidance .*'camera_scale': 0.0.*'camera_scale': 3.0"):
        sample_test_clip(method, cfg, dataset, 0, split, **kw, guidance={"camera_scale": 3.0})
    assert before == {p: p.stat().st_mtime_ns for p in split.glob("*/video.mp4")}
    guided = sample_test_clip(method, cfg, dataset, 0, tmp_path / "guided", **kw, guidance={"camera_scale": 3.0})
    assert read_samples(tmp_path / "guided")[0].meta["guidance"]["camera_scale"] == 3.0 and len(guided) == 1


class _Requeue:
    """Stands in for submitit's SIGUSR2 handler (which would requeue the job and exit)."""

    calls = 0

    def __call__(self, signum, frame):
        type(self).calls += 1


def _preempt_at(monkeypatch, call: int):
    from camvid.training import loop

    original = loop.TrainingObjective.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == call:  # SLURM's pre-timeout signal arrives during this step
            os.kill(os.getpid(), signal.SIGUSR2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop.TrainingObjective, "forward", forward)


def test_preemption_checkpoints_requeues_and_resumes_to_the_same_weights(data_root, tmp_path, monkeypatch):
    from camvid.training.loop import train

    def cfg_for(out):
        return compose(["experiment=cami2v_t2_camco_like", "scale=tiny", *TINY_DATA, *run_overrides(data_root, out),
                        "data=synthetic", "trainer.max_steps=4", "trainer.ckpt_every=4", "logger=wandb",
                        "logger.mode=offline"])

    reference = train(cfg_for(tmp_path / "reference"))
    previous = signal.signal(signal.SIGUSR2, _Requeue())
    try:
        with monkeypatch.context() as m:
            _preempt_at(m, 2)
            with pytest.raises(SystemExit) as stop:
                train(cfg_for(tmp_path / "preempted"))
        # the process would end here; in this test process, forget the stopped run's accelerate state
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        assert stop.value.code == 128 + signal.SIGUSR2 and _Requeue.calls == 1
        run = tmp_path / "preempted"
        assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002"]
        run_id = (run / "wandb_run_id.txt").read_text().strip()
        resumed = train(cfg_for(run))  # the requeued job: same config, same run directory
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert resumed["step"] == 4 and (run / "wandb_run_id.txt").read_text().strip() == run_id
    # both W&B attempts wrote into the one run id
    assert len([p for p in (run / "wandb").glob(f"offline-run-*-{run_id}")]) == 2
    ours = load_file(str(Path(resumed["checkpoint"]) / WEIGHTS_NAME))
    ref = load_file(str(Path(reference["checkpoint"]) / WEIGHTS_NAME))
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def test_bad_stages_are_named():
    from omegaconf import OmegaConf

    from camvid.experiments.stages import _stages

    assert _stages(OmegaConf.create({"stages": ["eval", "train"]})) == ["train", "eval"]  # pipeline order
    with pytest.raises(ValueError, match=r"stages=\['train', 'smaple'\]: choose a non-empty list of"):
        _stages(OmegaConf.create({"stages": ["train", "smaple"]}))


def test_eval_results_and_samples_go_to_the_training_runs_wandb_run(tmp_path):
    from omegaconf import OmegaConf

    from camvid.evaluation.tables import ResultRow
    from camvid.experiments.stages import _log_to_training_run
    from camvid.training.run_identity import run_id
    from camvid.viz.video import write_gif

    run = tmp_path / "run"
    (run / "samples" / "clip0").mkdir(parents=True)
    write_gif(run / "samples" / "clip0" / "video.gif", np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    the_id = run_id(run)  # made by the training stage
    cfg = OmegaConf.create({"seed": 3, "experiment_row": "cami2v_t2_full3d", "stages": ["train", "sample", "eval"],
                            "trainer": {"max_steps": 2},
                            "logger": {"name": "wandb", "project": "camvid", "mode": "offline", "group": "table-t",
                                       "tags": ["cami2v", "t2"], "log_videos": True}})
    _log_to_training_run(cfg, run, run / "samples", [ResultRow("TransErr", 1.25), ResultRow("FVD_videogpt", None)])
    import wandb

    wandb.teardown()  # run.finish() returns before W&B's service process has written the last records
    runs = list((run / "wandb").glob(f"offline-run-*-{the_id}"))
    assert len(runs) == 1
    data = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"eval/TransErr" in data and b"samples/clip0" in data and b"cami2v_t2_full3d-seed3" in data


def test_eval_stage_reevaluates_when_its_settings_change(tmp_path, capsys):
    """A rerun skips an evaluation only when its results were made with the same settings: changing
    stage_eval (another metric family, another SfM option) evaluates again instead of keeping the
    old table."""
    import json

    from omegaconf import OmegaConf

    from camvid.data import synthetic as syn
    from camvid.evaluation.camera_following import DEPTH_FILE
    from camvid.evaluation.layout import write_sample
    from camvid.experiments.stages import _eval_stage

    run = tmp_path / "run"
    samples = run / "samples"
    K = syn.default_intrinsics(32, 32, 60.0)
    for seed, kind in ((2, "forward"), (3, "truck")):
        c2w = syn.make_trajectory(kind, 20, seed)[::4]
        frames, depth = syn.render_frames(syn.make_scene(seed, texture_size=64), K, c2w, 32, 32)
        folder = write_sample(samples, f"clip{seed}", frames, K, c2w, "a room", 0, gt_video=frames)
        np.save(Path(folder) / DEPTH_FILE, depth[0].astype(np.float32))
    (samples / ".rank0_of_1.done").write_text("done\n")
    paths = {"root_dir": str(tmp_path), "data_dir": str(tmp_path), "log_dir": str(tmp_path),
             "weights_dir": str(tmp_path / "weights"), "output_dir": str(run)}

    def cfg(**stage_eval):
        return OmegaConf.create({"paths": paths, "paper_row": None, "stage_sample": {}, "stages": ["eval"],
                                 "stage_eval": {"metrics": ["camera_following"], **stage_eval}})

    results = Path(_eval_stage(cfg(), run))
    first = json.loads(results.read_text())
    assert first["settings"]["metrics"] == ["camera_following"]
    assert "samples_dir" not in first["settings"] and "paths" not in first["settings"]
    capsys.readouterr()
    _eval_stage(cfg(), run)  # same settings: skipped, the file untouched
    assert "stage skipped" in capsys.readouterr().out
    assert json.loads(results.read_text()) == first
    _eval_stage(cfg(reference=False), run)  # other settings: evaluated again
    assert "other settings" in capsys.readouterr().out
    again = json.loads(results.read_text())
    assert again["settings"]["reference"] is False and again["rows"] == first["rows"]
    # results written before they recorded their settings are evaluated again too
    again.pop("settings")
    results.write_text(json.dumps(again))
    _eval_stage(cfg(reference=False), run)
    assert "other settings" in capsys.readouterr().out and "settings" in json.loads(results.read_text())
