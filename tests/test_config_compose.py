"""Every model x attn x data combination composes; valid ones instantiate at tiny size, invalid ones
fail at start-up with a sentence naming both options."""

from __future__ import annotations

import itertools

import pytest

from camvid.config import ConfigError, check_combination
from conftest import compose

MODELS = ["dynamicrafter", "motionctrl", "cameractrl", "cami2v", "cvd", "animatediff"]
ATTNS = ["temporal", "full3d", "epipolar_ref", "epipolar", "cross_video"]
DATAS = ["synthetic", "re10k", "re10k_fold", "webvid_homography", "cvd_mix"]
FAMILIES = {  # which backbone families each method runs on (written out independently of conf/)
    "dynamicrafter": ["dynamicrafter"],
    "motionctrl": ["dynamicrafter", "animatediff"],
    "cameractrl": ["dynamicrafter", "animatediff"],
    "cami2v": ["dynamicrafter", "animatediff"],
    "cvd": ["animatediff", "dynamicrafter"],
    "animatediff": ["animatediff"],
}
VALID_ATTN = {
    "dynamicrafter": {"temporal"},
    "motionctrl": {"temporal"},
    "cameractrl": {"temporal"},
    "cami2v": {"temporal", "full3d", "epipolar_ref", "epipolar"},
    "cvd": {"cross_video"},
    "animatediff": {"temporal"},
}
PAIR_DATA = {"re10k_fold", "webvid_homography", "cvd_mix"}


def _valid_attn(model: str, family: str) -> set[str]:
    # on AnimateDiff, CamI2V is CameraCtrl plus a cross-frame attention: without one it would be CameraCtrl
    if model == "cami2v" and family == "animatediff":
        return VALID_ATTN[model] - {"temporal"}
    return VALID_ATTN[model]


def _is_valid(model: str, attn: str, data: str, family: str) -> bool:
    pairs = model == "cvd"
    return attn in _valid_attn(model, family) and ((data in PAIR_DATA) == pairs)


def _overrides(model, attn, data, family):
    return [f"model={model}", f"attn={attn}", f"data={data}", f"backbone=tiny_{family}",
            "trainer=cpu", "logger=none"]


ALL = [(m, a, d, f) for m, a, d in itertools.product(MODELS, ATTNS, DATAS) for f in FAMILIES[m]]
VALID = [c for c in ALL if _is_valid(*c)]
INVALID = [c for c in ALL if not _is_valid(*c)]


def test_tables_cover_every_option():
    assert len(VALID) == 32 and len(ALL) == 250


@pytest.mark.parametrize("model,attn,data,family", INVALID)
def test_invalid_combination_names_both_options(model, attn, data, family):
    cfg = compose(_overrides(model, attn, data, family))
    with pytest.raises(ConfigError) as err:
        check_combination(cfg)
    msg = str(err.value)
    offending = [f"attn={attn}"] if attn not in _valid_attn(model, family) else [f"data={data}"]
    assert f"model={model}" in msg and all(o in msg for o in offending), msg


@pytest.mark.parametrize("model,family", [("animatediff", "dynamicrafter"), ("dynamicrafter", "animatediff")])
def test_wrong_backbone_family_is_rejected(model, family):
    attn = sorted(VALID_ATTN[model])[0]
    data = "cvd_mix" if model == "cvd" else "synthetic"
    cfg = compose(_overrides(model, attn, data, family))
    with pytest.raises(ConfigError, match=f"model={model}.*backbone=tiny_{family}"):
        check_combination(cfg)


@pytest.mark.parametrize("model,attn,data,family", VALID)
def test_valid_combination_instantiates_tiny(model, attn, data, family):
    import torch

    from camvid.models.base import VideoDiffusionModel
    from camvid.models.registry import build_method

    cfg = compose(_overrides(model, attn, data, family))
    check_combination(cfg)
    method = build_method(cfg)
    assert isinstance(method, VideoDiffusionModel)
    method.freeze_base()
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert trainable, "every method trains something"
    frozen = [p for p in method.parameters() if not p.requires_grad]
    assert frozen, "the base model stays frozen"
    assert all(torch.isfinite(p).all() for p in trainable)


def test_model_defaults_pick_their_family():
    cfg = compose(["model=cvd"])
    assert cfg.backbone.family == "animatediff" and cfg.attn.name == "cross_video" and cfg.data.views == 2
    check_combination(cfg)
    cfg = compose(["model=cami2v"])
    assert cfg.backbone.family == "dynamicrafter" and cfg.attn.name == "epipolar"
    check_combination(cfg)
    # the command line wins over a model's defaults
    assert compose(["model=cvd", "backbone=tiny_animatediff"]).backbone.size == "tiny"


def test_every_experiment_and_debug_preset_composes():
    from camvid.config import check_combination as check

    for name in sorted(p.stem for p in (compose.__globals__["CONF_DIR"] / "experiment").glob("*.yaml")):
        check(compose([f"experiment={name}"]))
    for name in ("fast", "overfit"):
        cfg = compose([f"debug={name}", "backbone=tiny_dynamicrafter"])
        assert cfg.trainer.cpu and cfg.logger.name == "none"
