"""CamI2V Table 3: a row is benchmarks/backbone.py's measurement of its model, written where the table
collector reads results, and `make table TABLE=cami2v_t3` renders it beside the paper's numbers."""

from __future__ import annotations

import json

import pytest

from camvid.experiments.benchmark import benchmark_rows
from camvid.experiments.stages import run_job
from conftest import compose


def test_table3_rows_measure_their_own_model():
    for model in ("dynamicrafter", "motionctrl", "cameractrl", "cami2v"):
        cfg = compose([f"experiment=cami2v_t3_{model}"])
        assert cfg.model.name == model and cfg.backbone.name == "dynamicrafter_256"
        assert (cfg.backbone.height, cfg.backbone.width, cfg.backbone.num_frames) == (256, 256, 16)
        assert cfg.benchmark_row and cfg.benchmark.precision == "fp16" and cfg.benchmark.zero1
        tiny = compose([f"experiment=cami2v_t3_{model}", "scale=tiny"])
        assert tiny.backbone.name == "tiny_dynamicrafter" and tiny.benchmark.precision == "fp32"


def test_benchmark_rows_convert_units():
    rows = {r.metric: r.value for r in benchmark_rows(
        {"peak": 3 * 2 ** 30, "per_step": 0.5}, {"peak": 2 ** 29, "forward": 0.1, "backward": 0.2, "optimizer": 0.3,
                                                 "trainable": 1234})}
    assert rows == {"Trainable": 1234.0, "InferenceGiB": 3.0, "TrainingGiB": 0.5, "ForwardS": 0.1, "BackwardS": 0.2,
                    "OptimizerS": 0.3}


@pytest.mark.slow
def test_a_tiny_table3_row_runs_the_benchmark_and_renders_beside_the_paper(tmp_path):
    from camvid.experiments.tables import main

    root = tmp_path / "tables" / "tiny" / "cami2v_t3"
    run = root / "cami2v_t3_motionctrl" / "seed_1"
    cfg = compose(["experiment=cami2v_t3_motionctrl", "scale=tiny", "logger=none", f"paths.output_dir={run}",
                   "backbone.height=32", "backbone.width=32", "seed=1"])
    summary = run_job(cfg)
    assert summary["stages"] == ["benchmark"]
    results = json.loads((run / "samples" / "eval" / "results.json").read_text())
    values = {r["metric"]: r for r in results["rows"]}
    assert values["Trainable"]["value"] > 0 and values["Trainable"]["paper"] == pytest.approx(6.34e7)
    assert values["TrainingGiB"]["value"] > 0 and values["ForwardS"]["value"] > 0
    text = main(["cami2v_t3", "--root", str(root), "--scale", "tiny"])["md"].read_text()
    assert "0.387" in text and "16.75" in text  # the paper's MotionCtrl forward seconds and training GiB
    assert "no finished job" in text or "not computed" in text  # the rows that did not run say so
    assert run_job(cfg)["results"].endswith("results.json")  # a rerun skips the finished measurement
