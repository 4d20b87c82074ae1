"""What one job of an experiment runs: ``stages=[train, sample, eval]``, each resumable and skippable.

- ``train``: the training loop (auto-resumes from the run's latest checkpoint; skipped when the run
  holds a checkpoint at ``trainer.max_steps``).
- ``sample``: the test split into ``<run>/samples``, split over the job's ranks (every rank samples
  every ``world``-th clip; finished clips are skipped; a clip's seed is ``stage_sample.seed + index``).
  Without a ``train`` stage (zero-shot and released-weight rows) the model comes from ``pretrained=`` /
  ``method_ckpt=``; otherwise from the run's latest checkpoint.
- ``benchmark``: CamI2V Table 3's memory / time measurement of the row's model
  (:mod:`camvid.experiments.benchmark`; ``benchmark_row: true`` rows run only this stage).
- ``eval``: ``conf/eval.yaml``'s evaluation of ``<run>/samples`` (rank 0; skipped when its results
  are newer than every sample), into ``<run>/samples/eval``; the paper numbers come from ``paper_row``.
- ``stage_sample.sets``: further sample sets of the same model (own protocol, count, metrics), into
  ``<run>/samples_<name>`` and evaluated into ``<run>/samples_<name>/eval`` (CVD Table 2: CLIP on
  WebVid prompts, FID / KID on RealEstate10K).

Samples and final metrics are logged to the training run's W&B run (same id, resumed).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from camvid.experiments.cluster import export_distributed_env

__all__ = ["STAGES", "run_job", "eval_config", "rank_world"]

STAGES = ("train", "sample", "eval", "benchmark")
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
RESULTS_FILE = "results.json"


def _stages(cfg: DictConfig) -> list[str]:
    raw = cfg.get("stages") or []
    stages = [str(s) for s in (raw if OmegaConf.is_list(raw) or isinstance(raw, list) else [raw])]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"stages={stages}: choose a non-empty list of {list(STAGES)} (e.g. stages=[train,sample,eval])")
    return [s for s in STAGES if s in stages]  # always in pipeline order


def rank_world() -> tuple[int, int]:
    """This process's rank and the number of ranks, from the launcher's env:// variables."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_job(cfg: DictConfig) -> dict:
    """Run the configured stages of one job; returns a summary (``loss`` when it trained)."""
    from camvid.training.logger import finish_runs_on_exit
    from camvid.validation import validate_train_config

    stages = _stages(cfg)
    if cfg.get("benchmark_row"):
        # CamI2V Table 3: a row is a measurement (camvid.experiments.benchmark), at any scale
        stages = ["benchmark"]
    if "train" in stages and cfg.model.get("sampling_only"):
        # released systems sampled as they are (CVD's SparseCtrl / SVD baselines), also at scale=tiny
        print(f"train: model={cfg.model.name} is sampling-only: stage skipped", flush=True)
        stages.remove("train")
    if "train" in stages and _nothing_to_train(cfg):
        # a base-only row (no camera, temporal attention) on a frozen base: the papers' zero-shot row
        print(f"train: model={cfg.model.name} has no new modules and model.train_base is off, so nothing "
              "trains: stage skipped, the pretrained base is sampled as it is", flush=True)
        stages.remove("train")
    if stages != ["benchmark"]:  # a measurement reads no data and no weights (random weights, synthetic batch)
        validate_train_config(cfg)  # bad option values end the job before anything is read or built
    export_distributed_env()  # a multi-task submitit job: RANK/WORLD_SIZE/MASTER_* for accelerate
    summary: dict = {"stages": stages, "loss": float("nan")}
    with finish_runs_on_exit():
        run_dir = Path(cfg.paths.output_dir)
        if "train" in stages:
            summary.update(_train_stage(cfg, run_dir))
            run_dir = Path(summary["run_dir"])
        if "sample" in stages:
            summary["samples"] = str(_sample_stage(cfg, run_dir, trained="train" in stages))
        if "eval" in stages and rank_world()[0] == 0:
            summary["results"] = _eval_stage(cfg, run_dir)
        if "benchmark" in stages and rank_world()[0] == 0:
            from camvid.experiments.benchmark import run_benchmark_stage

            summary["results"], rows = run_benchmark_stage(cfg, run_dir)
            if rows is not None:  # the measurement goes to the row's W&B run like an evaluation
                _log_to_training_run(cfg, run_dir, run_dir / "samples", rows)
    return summary


# --- train ---------------------------------------------------------------------------------------

def _nothing_to_train(cfg: DictConfig) -> bool:
    """A model without new modules (no camera input, the backbone's own temporal attention, one view)
    whose base is frozen (``model.train_base`` false, or auto with pretrained weights)."""
    from camvid.models.registry import trains_base

    base_only = (cfg.model.get("camera") is None and str(cfg.attn.get("variant", "temporal")) == "temporal"
                 and int(cfg.model.get("views", 1) or 1) == 1)
    return base_only and not trains_base(cfg)


def _finished_step(run_dir: Path) -> int | None:
    from camvid.training.checkpoint import find_latest, read_trainer_state

    latest = find_latest(run_dir / "checkpoints")
    return int(read_trainer_state(latest)["step"]) if latest is not None else None


def _train_stage(cfg: DictConfig, run_dir: Path) -> dict:
    from camvid.training.loop import train

    if cfg.get("ckpt_path") is None and _finished_step(run_dir) == int(cfg.trainer.max_steps):
        print(f"train: {run_dir} holds the step-{cfg.trainer.max_steps} checkpoint: stage skipped", flush=True)
        return {"run_dir": str(run_dir), "step": int(cfg.trainer.max_steps)}
    return train(cfg)


# --- sample --------------------------------------------------------------------------------------

def _test_root(cfg: DictConfig, scfg=None) -> str:
    root = (scfg if scfg is not None else cfg.stage_sample).get("test_data")
    if root:
        return str(root)
    if cfg.data.get("format") == "mix":  # CVD's mix: its evaluation pairs come from RealEstate10K
        return str(cfg.data.re10k_root)
    return str(cfg.data.root)


def _load_method(cfg: DictConfig, run_dir: Path, trained: bool, device):
    from camvid.sampling import load_trained_method, pretrained_method, resolve_checkpoint

    if trained:
        ckpt = resolve_checkpoint(run_dir=run_dir)
        train_cfg, method = load_trained_method(ckpt, device)
        return train_cfg, method, str(ckpt)
    return pretrained_method(cfg, device)


def sample_sets(cfg: DictConfig) -> list[tuple[str, DictConfig, dict]]:
    """The job's sample sets: ``(folder, stage_sample settings, stage_eval overrides)``.

    The first is ``samples`` (``stage_sample`` / ``stage_eval``); every entry of
    ``stage_sample.sets`` adds ``samples_<name>``, its keys overriding ``stage_sample`` (``protocol``,
    ``num_samples``, ...) and its ``metrics`` the evaluated families. CVD's Table 2 needs two: CLIP on
    WebVid prompts, FID / KID on RealEstate10K prompts.
    """
    base = OmegaConf.create(OmegaConf.to_container(cfg.stage_sample, resolve=True))
    extra = base.pop("sets", None) or {}
    out = [("samples", base, {})]
    for name, spec in extra.items():
        if not str(name).replace("_", "").isalnum():
            raise ValueError(f"stage_sample.sets.{name}: name sample sets with letters, digits and _")
        spec = OmegaConf.create(spec or {})
        metrics = spec.pop("metrics", None)
        out.append((f"samples_{name}", OmegaConf.merge(base, spec), {} if metrics is None else {"metrics": metrics}))
    return out


def _sample_stage(cfg: DictConfig, run_dir: Path, trained: bool) -> Path:
    from camvid.data.factory import prepare_dataset
    from camvid.sampling import SamplingProtocol

    rank, world = rank_world()
    if rank == 0:
        prepare_dataset(cfg.data)  # the synthetic set of scale=tiny, when no training stage made it
    # every set's protocol (options, prompt file) is checked before the model is loaded
    sets = [(folder, scfg, SamplingProtocol.from_config(scfg.get("protocol"), f"stage_sample.protocol ({folder})"))
            for folder, scfg, _ in sample_sets(cfg)]
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    train_cfg, method, ckpt = _load_method(cfg, run_dir, trained, device)
    train_cfg = OmegaConf.merge(train_cfg, {"paper_row": cfg.get("paper_row")})
    for folder, scfg, protocol in sets:
        _sample_set(cfg, scfg, protocol, run_dir / folder, train_cfg, method, ckpt, rank, world)
    return run_dir / "samples"


def _sample_set(cfg, scfg, protocol, out_dir: Path, train_cfg, method, ckpt, rank: int, world: int) -> None:
    from camvid.sampling import eval_split_dataset, sample_test_clip, shard_indices

    out_dir.mkdir(parents=True, exist_ok=True)
    root, split = _test_root(cfg, scfg), str(scfg.get("split", "test"))
    dataset = eval_split_dataset(train_cfg, root, split, pairs=protocol.pairs)
    n = min(int(scfg.num_samples), len(dataset))
    mine = shard_indices(n, rank, world)
    written = 0
    for idx in mine:
        written += len(sample_test_clip(method, train_cfg, dataset, idx, out_dir, base_seed=int(scfg.seed),
                                        ckpt=ckpt, steps=scfg.get("steps"), guidance=scfg.get("guidance"),
                                        test_root=root, split=split, protocol=protocol))
    (out_dir / f".rank{rank}_of_{world}.done").write_text(json.dumps({"clips": mine, "written": written}))
    print(f"sample: rank {rank}/{world} wrote {written} videos ({len(mine)} clips, the rest already there) "
          f"into {out_dir}", flush=True)


# --- eval ----------------------------------------------------------------------------------------

def eval_config(cfg: DictConfig, samples_dir: Path, overrides: dict | None = None, scfg=None) -> dict:
    """conf/eval.yaml's settings with this run's paths, ``stage_eval`` (then a sample set's
    ``overrides``) overriding them. Samples drawn along identical trajectories are also scored by the
    ``identical_mse`` family, which is what they are for (CVD appendix A.5)."""
    base = OmegaConf.load(CONF_DIR / "eval.yaml")
    for key in ("defaults", "hydra", "task_name"):
        base.pop(key, None)
    merged = OmegaConf.merge(base, {"paths": cfg.paths}, cfg.get("stage_eval") or {}, overrides or {},
                             {"samples_dir": str(samples_dir), "paper_row": cfg.get("paper_row")})
    merged.paths.output_dir = str(samples_dir)  # the hydra: resolver is not available outside a job
    out = OmegaConf.to_container(merged, resolve=True)
    protocol = ((scfg if scfg is not None else cfg.get("stage_sample") or {}).get("protocol") or {})
    if protocol.get("identical_trajectories") and "identical_mse" not in out["metrics"]:
        out["metrics"] = [*out["metrics"], "identical_mse"]
    return out


def _wait_for_ranks(samples_dir: Path, world: int, timeout_s: float = 6 * 3600) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(samples_dir.glob(f".rank*_of_{world}.done"))) < world:
        if time.monotonic() > deadline:
            raise TimeoutError(f"eval: not every one of {world} ranks finished sampling into {samples_dir}")
        time.sleep(2)


def _recorded_settings(results: Path) -> dict | None:
    """The evaluation settings a results.json was made with (None: unreadable, or written before
    results recorded them)."""
    try:
        return json.loads(results.read_text()).get("settings")
    except (OSError, ValueError):
        return None


def _eval_stage(cfg: DictConfig, run_dir: Path) -> str:
    from camvid.evaluation.pipeline import eval_settings, run_evaluation

    first = None
    for folder, scfg, overrides in sample_sets(cfg):
        samples_dir = run_dir / folder
        _wait_for_ranks(samples_dir, rank_world()[1])
        ecfg = eval_config(cfg, samples_dir, overrides, scfg)
        out_dir = Path(ecfg.get("out_dir") or samples_dir / "eval")
        if folder != "samples" and ecfg.get("out_dir"):  # one results folder per set
            out_dir = Path(ecfg["out_dir"]) / folder
            ecfg["out_dir"] = str(out_dir)
        results = out_dir / RESULTS_FILE
        first = first or str(results)
        newest = max((p.stat().st_mtime for p in samples_dir.glob("*/meta.json")), default=0.0)
        if results.is_file() and results.stat().st_mtime >= newest:
            if _recorded_settings(results) == eval_settings(ecfg):
                print(f"eval: {results} is newer than every sample and has these settings: stage skipped",
                      flush=True)
                continue
            print(f"eval: {results} was made with other settings (stage_eval): evaluating again", flush=True)
        result = run_evaluation(ecfg)
        print(result["markdown"], flush=True)
        prefix = "eval" if folder == "samples" else f"eval_{folder.removeprefix('samples_')}"
        _log_to_training_run(cfg, run_dir, samples_dir, result["rows"], prefix)
    return first


def _log_to_training_run(cfg: DictConfig, run_dir: Path, samples_dir: Path, rows, prefix: str = "eval") -> None:
    """Final metrics and a few sample videos into the training run's W&B run (same id, resumed)."""
    from camvid.training.logger import build_logger
    from camvid.training.run_identity import run_id, run_name

    logger = build_logger(cfg.get("logger"), run_dir, OmegaConf.to_container(cfg, resolve=True), True,
                          run_name=run_name(cfg, run_dir), run_id=run_id(run_dir))
    # one step past training: a resumed W&B run drops points logged at a step it has passed already
    step = int(cfg.trainer.max_steps) + 1 if "train" in _stages(cfg) else 0
    logger.log({f"{prefix}/{r.metric}": r.value for r in rows if r.value is not None}, step=step)
    logger.log_table(f"{prefix}/results", ["metric", "ours", "gt_reference", "paper", "note"],
                     [[r.metric, r.value, r.reference, r.paper, r.note] for r in rows], step=step)
    for gif in sorted(samples_dir.glob("*/video.gif"))[:4]:
        logger.log_video(f"{samples_dir.name}/{gif.parent.name}", gif, step=step)
    logger.finish()
