"""The tiny-ablation command renders CamI2V's table from its rows (two rows, one seed, a few steps)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import tiny_ablation  # noqa: E402


def test_two_rows_one_seed_render_the_table(data_root, tmp_path, capsys):
    out = tmp_path / "t1"
    tiny_ablation.main(["--table", "cami2v_t1", "--rows", "dynamicrafter,cami2v", "--seeds", "1", "--steps", "1",
                        "--size", "32", "--frames", "4", "--samples", "2", "--data", str(data_root),
                        "--out", str(out)])
    md = (out / "table.md").read_text()
    assert "no camera (DynamiCrafter)" in md and "CamI2V (Plücker + epipolar, all frames)" in md
    # the paper's numbers beside ours (CamI2V Table 1: RotErr of DynamiCrafter and of CamI2V)
    assert "3.341" in md and "0.4758" in md
    table = json.loads((out / "table.json").read_text())
    assert [r["row"] for r in table["rows"]] == ["cami2v_t1_dynamicrafter", "cami2v_t1_cami2v"]
    for row in table["rows"]:
        mean, std = row["metrics"]["CamFollowPSNR"]
        assert mean is not None and 0 < mean < 100 and std == 0.0
        assert row["gt"] is not None and row["static"] is not None
    # each row trained the model it names
    cfg = (out / "cami2v_t1_dynamicrafter" / "seed0" / "train" / "config_resolved.yaml").read_text()
    assert "name: dynamicrafter" in cfg and "parameterization: x0" in cfg
    assert "table:" in capsys.readouterr().out


def test_unknown_rows_and_tables_are_named():
    with pytest.raises(SystemExit, match="unknown row 'nope'"):
        tiny_ablation.resolve_rows("cami2v_t1", "cami2v,nope")
    with pytest.raises(SystemExit, match="choose one of cami2v_t1, cami2v_t2"):
        tiny_ablation.resolve_rows("t9", None)
