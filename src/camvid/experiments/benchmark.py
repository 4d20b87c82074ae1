"""The ``benchmark`` stage of CamI2V Table 3's rows: ``benchmarks/backbone.py``'s measurement of one
model (an inference run and a training step, each in a fresh child process) written as the row's
``<run>/samples/eval/results.json``, so ``make table TABLE=cami2v_t3`` puts it beside the paper.

Settings (``benchmark`` in the row presets; ``scale=tiny`` shrinks them): ``batch``, ``steps`` (DDIM
steps of the inference run), ``repeat`` (best of), ``precision`` (``fp16`` / ``bf16`` / ``fp32``
autocast), ``zero1`` (ZeroRedundancyOptimizer: in one process it shards nothing, so the training peak
holds every Adam moment where the paper's 8-GPU ZeRO-1 holds an eighth), ``grad_checkpointing``. The
size is the row's backbone (``backbone.height/width/num_frames``); the model the row's ``model``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

__all__ = ["BENCHMARK_SCRIPT", "benchmark_rows", "run_benchmark_stage"]

BENCHMARK_SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "backbone.py"
GIB = 2 ** 30


def _case(cfg: DictConfig, phase: str, device: str) -> dict:
    b = cfg.benchmark
    cmd = [sys.executable, str(BENCHMARK_SCRIPT), "_case", "--model", str(cfg.model.name), "--phase", phase,
           "--backbone", str(cfg.backbone.name), "--height", str(cfg.backbone.height),
           "--width", str(cfg.backbone.width), "--frames", str(cfg.backbone.num_frames), "--batch", str(b.batch),
           "--steps", str(b.steps), "--repeat", str(b.repeat), "--precision", str(b.precision), "--device", device,
           *(["--zero1"] if b.get("zero1") else []), *(["--grad-checkpointing"] if b.get("grad_checkpointing") else [])]
    src = str(BENCHMARK_SCRIPT.parents[1] / "src")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src})
    if proc.returncode:
        raise RuntimeError(f"benchmark: {cfg.model.name} {phase} failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark_rows(inference: dict, training: dict):
    """Table 3's columns from the two measurements (memory in GiB, times in seconds)."""
    from camvid.evaluation.tables import ResultRow

    return [
        ResultRow("Trainable", float(training["trainable"]), better="",
                  note="parameters the method trains (the pretrained base frozen; DynamiCrafter: full fine-tuning)"),
        ResultRow("InferenceGiB", inference["peak"] / GIB, better="lower",
                  note=f"peak over one sampling run ({inference['per_step']:.3f} s per DDIM step)"),
        ResultRow("TrainingGiB", training["peak"] / GIB, better="lower", note="peak over one training step"),
        ResultRow("ForwardS", float(training["forward"]), better="lower"),
        ResultRow("BackwardS", float(training["backward"]), better="lower"),
        ResultRow("OptimizerS", float(training["optimizer"]), better="lower"),
    ]


def run_benchmark_stage(cfg: DictConfig, run_dir: Path) -> tuple[str, list | None]:
    """Measure the row's model and write its results; returns the results file and the measured rows
    (``None`` when the file existed and the stage was skipped)."""
    import torch

    from camvid.evaluation.pipeline import _attach_paper
    from camvid.evaluation.tables import write_tables

    if cfg.get("benchmark") is None:
        raise ValueError("stages=[benchmark] needs a benchmark: block (batch, steps, repeat, precision, zero1); "
                         "see conf/experiment/cami2v_t3_*.yaml")
    out_dir = run_dir / "samples" / "eval"
    results = out_dir / "results.json"
    if results.is_file():
        print(f"benchmark: {results} exists: stage skipped", flush=True)
        return str(results), None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inference, training = _case(cfg, "inference", device), _case(cfg, "training", device)
    rows = benchmark_rows(inference, training)
    source = _attach_paper(rows, cfg.get("paper_row"))
    b = cfg.benchmark
    setting = (f"{cfg.model.name} on {cfg.backbone.name} {cfg.backbone.height}x{cfg.backbone.width}, "
               f"{cfg.backbone.num_frames} frames, batch {b.batch}, {b.steps} steps, {b.precision}, "
               f"zero1={bool(b.get('zero1'))}, {device}")
    extra = {"benchmark": {"setting": setting, "inference": inference, "training": training},
             "paper_row": cfg.get("paper_row")}
    paths = write_tables(out_dir, rows, extra, f"benchmark: {setting}", source)
    print(paths["md"].read_text(), flush=True)
    return str(paths["json"]), rows
