"""The shipped tiny pretrained base (``pretrained=builtin:tiny_dynamicrafter_base``): it loads
strictly into the demo's model, only the camera modules train on top of it, and the configs that
should use it do."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from camvid.assets import BUILTIN_WEIGHTS, resolve_weights
from camvid.models.dynamicrafter.checkpoint import is_camera_key
from camvid.models.registry import build_method, set_trainable
from camvid.validation import weights_path
from conftest import compose

BASE = BUILTIN_WEIGHTS["tiny_dynamicrafter_base"]


def test_shipped_base_is_small_and_documented():
    assert BASE.is_file() and BASE.stat().st_size <= 25 * 2**20
    card = json.loads(BASE.with_suffix(".json").read_text())
    for key in ("command", "recipe", "seed", "step", "train_seconds", "parameters", "data"):
        assert card[key] is not None, key
    assert card["bytes"] == BASE.stat().st_size


def test_demo_loads_the_base_strictly_and_can_train_it_with_the_camera_modules():
    cfg = compose(["experiment=demo", "model.train_base=true"])
    assert cfg.pretrained == "builtin:tiny_dynamicrafter_base"
    torch.manual_seed(0)
    method = build_method(cfg)
    state = load_file(str(BASE))
    own = method.state_dict()
    base_keys = {k for k in own if not is_camera_key(k) and not k.startswith("pose_encoder.")}
    # every base tensor of the model comes from the file, and the file holds nothing else
    assert set(state) == base_keys
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    # model.train_base=true (the tiny tables' recipe) trains the base with the camera modules; the
    # frozen encoders stay frozen
    assert set_trainable(method, cfg) is True
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    camera = {n for n in trained if is_camera_key(n) or n.startswith("pose_encoder.")}
    assert camera and trained - camera
    assert not any(p.requires_grad for enc in method.encoder_modules() for p in enc.parameters())


def test_demo_freezes_the_shipped_base_as_the_papers_do():
    cfg = compose(["experiment=demo"])
    assert cfg.model.train_base is False
    torch.manual_seed(0)
    method = build_method(cfg)
    assert set_trainable(method, cfg) is False
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trained and all(is_camera_key(n) or n.startswith("pose_encoder.") for n in trained)


def test_base_file_with_a_missing_tensor_is_refused(tmp_path):
    from safetensors.torch import save_file

    state = load_file(str(BASE))
    state.pop(next(k for k in state if k.startswith("model.diffusion_model.")))
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    cfg = compose(["experiment=demo", f"pretrained={bad}"])
    with pytest.raises(ValueError, match="missing"):
        build_method(cfg)


def test_builtin_names_are_checked():
    assert resolve_weights("builtin:tiny_dynamicrafter_base") == str(BASE)
    assert resolve_weights(None) is None and resolve_weights("/some/file.ckpt") == "/some/file.ckpt"
    with pytest.raises(ValueError, match="builtin:tiny_dynamicrafter_base"):
        resolve_weights("builtin:nope")
    assert weights_path("builtin:tiny_dynamicrafter_base") is None
    assert "known built-in" in weights_path("builtin:nope")


@pytest.mark.parametrize("table,preset,base", [
    ("cami2v_t2", "cami2v_t2_pluecker_only", "builtin:tiny_dynamicrafter_base"),
    ("cami2v_t1", "cami2v_t1_motionctrl", "builtin:tiny_dynamicrafter_base"),
    ("cvd_t3", "cvd_t3_cvd", None),  # AnimateDiff has no tiny base: its rows train from scratch
])
def test_tiny_rows_start_from_the_base_of_their_family(table, preset, base):
    row = compose([f"table={table}", "scale=tiny", f"experiment={preset}"])
    assert row.pretrained == base and row.backbone.pretrained == base


def test_make_tiny_base_command_writes_a_base_the_demo_loads(tmp_path):
    """The documented command end to end at a toy size (4 clips, 2 steps): a base file with its card,
    which ``pretrained=PATH`` loads strictly into the demo's model."""
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "base.safetensors"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_base.py"), "--work", str(tmp_path / "w"),
                           "--out", str(out), "--clips", "4", "--steps", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["step"] == 2 and card["bytes"] == out.stat().st_size
    assert set(load_file(str(out))) == set(load_file(str(BASE)))  # same tensors as the shipped base
    method = build_method(compose(["experiment=demo", f"pretrained={out}"]))
    state = load_file(str(out))
    own = method.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
