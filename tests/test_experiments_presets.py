"""Every paper-row preset composes, instantiates (tiny on the CPU, full size on the meta device),
names its paper row, and a representative subset trains one step at tiny size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from camvid.evaluation.tables import load_paper_numbers
from camvid.models.registry import _attn_kwargs, build_method
from conftest import CONF_DIR, TINY_DATA, compose, data_overrides, run_overrides

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")
                 if p.stem not in ("demo", "tiny_base") and not p.stem.startswith("recipe_"))
TABLES = sorted(p.stem for p in (CONF_DIR / "table").glob("*.yaml"))


def test_every_paper_table_row_has_a_preset():
    # CamI2V Tables 1 (256 + 512), 2 and 3, CVD Tables 1-3 (with the sampling-only baseline rows) and
    # appendix A.5: 37 presets
    assert len(PRESETS) == 37
    for name in PRESETS:
        header = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
        assert header[0] == "# @package _global_"
        assert header[1].startswith("# Paper: ") and header[2].startswith("# Table/row: ")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_instantiates_at_tiny_size(name):
    cfg = compose([f"experiment={name}"])
    assert cfg.experiment_row == name
    assert cfg.paper_row is None or cfg.paper_row in load_paper_numbers()
    assert cfg.model.optimizer.lr == pytest.approx(1e-4)
    if name.startswith("cami2v"):  # 8 GPUs x 8 = effective batch 64, 50k steps, fp16, ZeRO-1
        assert cfg.backbone.family == "dynamicrafter"
        # Table 3's rows are one-process measurements (tests/test_experiments_benchmark.py)
        tasks = 1 if cfg.get("benchmark_row") else 8
        assert (cfg.resources.tasks, cfg.trainer.batch_size, cfg.trainer.grad_accum) == (tasks, 8, 1)
        assert (cfg.trainer.max_steps, cfg.trainer.precision, cfg.trainer.distributed) == (50000, "fp16", "deepspeed_zero1")
        assert cfg.backbone.size == ("512" if "_512_" in name else "256")
    else:  # CVD: effective batch 8 on 8 GPUs, 100k iterations
        assert cfg.backbone.family == "animatediff"
        assert (cfg.resources.tasks * cfg.trainer.batch_size, cfg.trainer.max_steps) == (8, 100000)
    if cfg.model.name == "cvd" and cfg.data.name == "cvd_mix":
        assert list(cfg.data.mix_weights) == [0.7, 0.3]
    # the same row at tiny size: the CPU stand-in builds (full size: test_full_size_presets_build_on_meta)
    tiny = compose([f"experiment={name}", "scale=tiny", "backbone.num_frames=8"])
    # DynamiCrafter rows start from the shipped tiny base; AnimateDiff has none
    base = "builtin:tiny_dynamicrafter_base" if cfg.backbone.family == "dynamicrafter" else None
    assert tiny.backbone.size == "tiny" and tiny.trainer.cpu and tiny.pretrained == base
    assert tiny.trainer.precision == "no" and tiny.trainer.get("distributed") is None
    assert tiny.stages == ["train", "sample", "eval"]  # every row trains (zero-shot rows fine-tune the base)
    if cfg.model.get("sampling_only"):  # released systems: run_job skips train (tests/test_baselines.py)
        assert cfg.stages == ["sample", "eval"] and cfg.data.views == 2
        if name not in ("cvd_t2_cameractrl_sparsectrl", "cvd_t2_motionctrl_svd"):
            return  # the other baseline rows share these two models' tiny stand-ins
    model = build_method(tiny)
    assert sum(p.numel() for p in model.parameters()) < 20_000_000


def test_ablation_rows_change_what_the_paper_says():
    assert compose(["experiment=cami2v_t2_camco_like"]).attn.variant == "epipolar_ref"
    assert compose(["experiment=cami2v_t2_full3d"]).attn.variant == "full3d"
    assert compose(["experiment=cami2v_t2_pluecker_only"]).attn.variant == "temporal"
    assert compose(["experiment=cvd_t3_no_epipolar"]).attn.masked is False
    assert compose(["experiment=cvd_t3_re10k_only"]).data.pairing == "fold"
    assert compose(["experiment=cvd_t3_no_homography"]).data.homography_strength == 0.0
    assert compose(["experiment=cvd_t3_one_layer"]).attn.num_attention_blocks == 1
    assert compose(["experiment=cami2v_t1_dynamicrafter"]).stages == ["sample", "eval"]


def _meta_build(cfg):
    kwargs = dict(method=cfg.model.name, size=str(cfg.backbone.size), attn=cfg.attn.variant,
                  attn_kwargs=_attn_kwargs(cfg.attn), device="meta")
    if cfg.backbone.family == "dynamicrafter":
        from camvid.models.dynamicrafter import build_dynamicrafter_method

        return build_dynamicrafter_method(**kwargs)
    from camvid.models.animatediff import build_animatediff_method

    return build_animatediff_method(**kwargs)


@pytest.mark.slow
def test_full_size_presets_build_on_meta():
    seen = {}
    for name in PRESETS:
        cfg = compose([f"experiment={name}"])
        if cfg.model.get("sampling_only"):  # released diffusers systems: tests/test_baselines.py
            continue
        key = (cfg.backbone.family, cfg.backbone.size, cfg.model.name, yaml.safe_dump(_attn_kwargs(cfg.attn)),
               cfg.attn.variant)
        if key not in seen:
            model = _meta_build(cfg)
            assert all(p.is_meta for p in model.parameters())
            seen[key] = sum(p.numel() for p in model.parameters())
    assert len(seen) >= 14


def test_one_sync_layer_reaches_the_modules():
    two = build_method(compose(["experiment=cvd_t3_cvd", "scale=tiny"]))
    one = build_method(compose(["experiment=cvd_t3_one_layer", "scale=tiny"]))
    from camvid.attention.variants import CrossVideoBlock

    def blocks(m):
        return [len(b.attention_blocks) for b in m.modules() if isinstance(b, CrossVideoBlock)]
    assert blocks(two) and set(blocks(two)) == {2}
    assert set(blocks(one)) == {1} and len(blocks(one)) == len(blocks(two))
    # CVD on DynamiCrafter takes the option too
    dc = build_method(compose(["model=cvd", "backbone=tiny_dynamicrafter", "attn.num_attention_blocks=1"]))
    assert blocks(dc) and set(blocks(dc)) == {1}


def test_epipolar_only_row_has_no_pluecker_parts():
    model = build_method(compose(["experiment=cami2v_t2_epipolar_only", "scale=tiny"]))
    assert not hasattr(model, "pose_encoder")  # CamI2V's rows otherwise all carry one
    names = {n for n, _ in model.named_parameters()}
    assert not any("pluker_projection" in n for n in names) and any(".epipolar." in n for n in names)
    model.freeze_base()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".epipolar." in n for n in trainable)  # the cross-frame attention alone learns
    with pytest.raises(ValueError, match="model.plucker=false"):
        build_method(compose(["experiment=cvd_t2_cvd", "scale=tiny", "+model.plucker=false"]))


@pytest.mark.parametrize("name", ["cami2v_t2_camco_like", "cami2v_t2_epipolar_only", "cvd_t3_one_layer"])
def test_preset_trains_one_step_at_tiny_size(name, data_root, tmp_path):
    from camvid.training.loop import train

    model = compose([f"experiment={name}"]).model.name
    cfg = compose([f"experiment={name}", "scale=tiny", *TINY_DATA, *run_overrides(data_root, tmp_path), *data_overrides(model, data_root),
                   "trainer.max_steps=1", "trainer.ckpt_every=1"])
    summary = train(cfg)
    assert summary["step"] == 1 and torch.isfinite(torch.tensor(summary["loss"]))
    assert Path(summary["checkpoint"]).name == "step_00000001"


@pytest.mark.parametrize("table", TABLES)
def test_table_sweeps_every_row_preset(table):
    cfg = compose([f"table={table}"])
    presets = [r["preset"] for r in cfg.table.rows if r["preset"]]
    hydra = yaml.safe_load((CONF_DIR / "table" / f"{table}.yaml").read_text())["hydra"]
    assert hydra["sweeper"]["params"]["experiment"].split(",") == presets
    assert hydra["mode"] == "MULTIRUN" and "now:" not in hydra["sweep"]["dir"]  # stable: reruns resume
    assert all(p in PRESETS for p in presets)
    for row in cfg.table.rows:  # a row without a preset says why
        assert row["preset"] or row["note"]
    assert cfg.logger.group == f"table-{table}"
