"""The learned matcher of the geometry protocol (DISK + LightGlue through kornia): local weights in
the released key layouts, the matcher interface, and "not computed" without its files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

kf = pytest.importorskip("kornia.feature")

from camvid.evaluation.learned_matching import (  # noqa: E402
    LightGlueMatcher,
    kornia_to_official_lightglue,
    official_to_kornia_lightglue,
)
from camvid.evaluation.matching import Matches  # noqa: E402
from camvid.evaluation.weights import MissingWeights  # noqa: E402


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random-initialised DISK and LightGlue weights written in the released layouts:
    ``{"extractor": ...}`` (cvlab-epfl/disk) and ``self_attn.<i>`` / ``cross_attn.<i>`` (cvg/LightGlue v0.1)."""
    root = tmp_path_factory.mktemp("matcher_weights")
    torch.manual_seed(0)
    disk = kf.DISK(desc_dim=128)
    torch.save({"extractor": disk.state_dict()}, root / "depth-save.pth")
    lightglue = kf.LightGlue(features=None, input_dim=128, flash=False)
    official = kornia_to_official_lightglue(lightglue.state_dict())
    torch.save(official, root / "disk_lightglue.pth")
    return root, disk, lightglue, official


def _images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)  # 80x80 blocky texture
    return base[:72, :76], base[4:76, 2:78]  # a shifted crop: not a multiple of 16 (DISK pads)


def test_released_layouts_convert_both_ways(weight_files):
    _, _, lightglue, official = weight_files
    assert "self_attn.0.Wqkv.weight" in official and "cross_attn.8.ffn.0.weight" in official
    assert not any(k.startswith("transformers.") for k in official) and "confidence_thresholds" not in official
    back = official_to_kornia_lightglue(official)
    assert set(back) == set(lightglue.state_dict()) - {"confidence_thresholds"}


def test_matcher_returns_disk_keypoints_and_lightglue_matches(weight_files):
    root, disk, lightglue, _ = weight_files
    matcher = LightGlueMatcher(extractor_weights=str(root / "depth-save.pth"),
                               lightglue_weights=str(root / "disk_lightglue.pth"), max_num_keypoints=64,
                               filter_threshold=0.0)  # random weights: keep every mutual assignment
    for a, b in zip(matcher.extractor.state_dict().values(), disk.state_dict().values()):
        assert torch.equal(a, b)  # the file's weights, loaded strictly
    for name, value in lightglue.state_dict().items():
        assert torch.equal(matcher.lightglue.state_dict()[name], value), name
    img0, img1 = _images()
    m = matcher(img0, img1)
    assert isinstance(m, Matches)
    with torch.no_grad():
        ref = disk.eval()(torch.from_numpy(img0).permute(2, 0, 1)[None].float() / 255, n=64,
                          pad_if_not_divisible=True)[0]
    # kornia's pixel centres are at integers, camvid's at +0.5
    np.testing.assert_allclose(m.keypoints0, ref.keypoints.double().numpy() + 0.5)
    assert 0 < len(m.keypoints0) <= 64 and 0 < len(m.keypoints1) <= 64
    assert (m.keypoints0 > 0).all() and (m.keypoints0[:, 0] < 76).all() and (m.keypoints0[:, 1] < 72).all()
    assert m.matches.dtype == np.int64 and m.matches.ndim == 2 and m.matches.shape[1] == 2
    assert len(m.matches) > 0
    assert m.matches.min() >= 0
    assert m.matches[:, 0].max() < len(m.keypoints0) and m.matches[:, 1].max() < len(m.keypoints1)
    assert len(set(m.matches[:, 0])) == len(set(m.matches[:, 1])) == len(m.matches)  # one-to-one
    again = matcher(img0, img1)
    assert np.array_equal(again.matches, m.matches)


def test_missing_or_foreign_weights_say_which_file(weight_files, tmp_path):
    root = weight_files[0]
    with pytest.raises(MissingWeights, match="disk_lightglue.pth.*github.com/cvg/LightGlue"):
        LightGlueMatcher(extractor_weights=str(root / "depth-save.pth"),
                         lightglue_weights=str(tmp_path / "disk_lightglue.pth"))
    with pytest.raises(MissingWeights, match="depth-save.pth.*cvlab-epfl/disk"):
        LightGlueMatcher(extractor_weights=None, lightglue_weights=str(root / "disk_lightglue.pth"))
    with pytest.raises(ValueError, match="LightGlue weights.*released key layout"):  # files swapped
        LightGlueMatcher(extractor_weights=str(root / "depth-save.pth"), lightglue_weights=str(root / "depth-save.pth"))
    superpoint = tmp_path / "superpoint_lightglue.pth"  # 256-d input: another configuration's shapes
    torch.save(kornia_to_official_lightglue(kf.LightGlue(features=None, input_dim=256, flash=False).state_dict()),
               superpoint)
    with pytest.raises(ValueError, match="LightGlue weights"):
        LightGlueMatcher(extractor_weights=str(root / "depth-save.pth"), lightglue_weights=str(superpoint))
    with pytest.raises(ValueError, match="features="):
        LightGlueMatcher(features="superpoint")


def test_evaluation_without_matcher_weights_marks_geometry_not_computed(tmp_path):
    from camvid.data.synthetic import default_intrinsics, make_trajectory
    from camvid.evaluation.layout import write_sample
    from camvid.evaluation.pipeline import run_evaluation

    K = default_intrinsics(32, 32)
    video = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    write_sample(tmp_path / "s", "a", video, K, make_trajectory("truck", 4, 0), "a room", 0)
    matchers = {"lightglue_disk": {"_target_": "camvid.evaluation.learned_matching.LightGlueMatcher",
                                   "extractor_weights": str(tmp_path / "w" / "depth-save.pth"),
                                   "lightglue_weights": str(tmp_path / "w" / "disk_lightglue.pth")}}
    result = run_evaluation({"samples_dir": str(tmp_path / "s"), "metrics": ["geometry"], "reference": False,
                             "matchers": matchers, "geometry": {"matcher": "lightglue_disk"}})
    rows = {r.metric: r for r in result["rows"]}
    for m in ("RotAUC@5", "TransAUC@20", "Precision", "xRotAUC@5", "xMatchingScore"):
        assert rows[m].value is None and "not computed" in rows[m].note and "depth-save.pth" in rows[m].note, m
    with pytest.raises(ValueError, match="not a matcher"):
        run_evaluation({"samples_dir": str(tmp_path / "s"), "metrics": ["geometry"], "matchers": matchers,
                        "geometry": {"matcher": "superglue"}})


@pytest.mark.slow  # a subprocess: ~1 min on a busy 2-core machine
def test_evaluate_cli_runs_the_learned_matcher_by_name(weight_files, tmp_path):
    """``src/evaluate.py geometry.matcher=lightglue_disk`` with the weights in place: the geometry rows
    come from DISK + LightGlue (random weights here: numbers, not accuracy)."""
    import json
    import os
    import subprocess
    import sys

    from camvid.data.synthetic import default_intrinsics, make_scene, make_trajectory, render_frames
    from camvid.evaluation.layout import write_sample
    from conftest import REPO

    root = weight_files[0]
    K = default_intrinsics(48, 48)
    c2w = make_trajectory("truck", 3, 0)
    video, _ = render_frames(make_scene(1), K, c2w, 48, 48)
    write_sample(tmp_path / "s", "a", video, K, c2w, "a room", 0)
    done = subprocess.run(
        [sys.executable, "src/evaluate.py", f"samples_dir={tmp_path / 's'}", "metrics=[geometry]", "reference=false",
         "geometry.matcher=lightglue_disk", f"matchers.lightglue_disk.extractor_weights={root / 'depth-save.pth'}",
         f"matchers.lightglue_disk.lightglue_weights={root / 'disk_lightglue.pth'}",
         "matchers.lightglue_disk.filter_threshold=0.0", f"hydra.run.dir={tmp_path / 'logs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["metric"]: r for r in json.loads((tmp_path / "s" / "eval" / "results.json").read_text())["rows"]}
    assert rows["Precision"]["value"] is not None and "2 pairs" in rows["Precision"]["note"]
