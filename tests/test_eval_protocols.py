"""CVD's evaluation protocols: WebVid prompts on RealEstate10K trajectory pairs, single-video
baselines sampled in pairs (one group: CLIP-F and the cross-video metrics apply), identical
trajectories and the appendix's identical-trajectory MSE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camvid.data.prompts import load_prompts, prompt_for
from camvid.evaluation.layout import read_samples
from camvid.evaluation.pipeline import run_evaluation
from camvid.sampling import SamplingProtocol, eval_split_dataset, sample_test_clip
from conftest import TINY_DATA, compose, data_overrides, run_overrides


def test_prompt_files_and_their_fixed_order(tmp_path):
    (tmp_path / "webvid.csv").write_text("videoid,name,page_dir\n1,a dog runs,p\n2,,p\n3,waves at dusk,p\n")
    assert load_prompts(tmp_path / "webvid.csv") == ["a dog runs", "waves at dusk"]  # empty captions dropped
    (tmp_path / "p.json").write_text(json.dumps({"b": "second", "a": "first"}))
    assert load_prompts(tmp_path / "p.json") == ["first", "second"]
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert load_prompts(tmp_path / "p.txt") == ["one", "two"]
    caps = [f"caption {i}" for i in range(7)]
    drawn = [prompt_for(caps, i, seed=3) for i in range(7)]
    assert sorted(r for _, r in drawn) == list(range(7))  # a permutation: every caption once
    assert prompt_for(caps, 9, seed=3) == drawn[2]  # cycling, and the same whoever asks
    assert [prompt_for(caps, i, seed=4)[1] for i in range(7)] != [r for _, r in drawn]
    (tmp_path / "bad.csv").write_text("videoid,url\n1,x\n")
    with pytest.raises(ValueError, match="no caption column.*'name'"):
        load_prompts(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        load_prompts(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="prompts_path"):
        SamplingProtocol.from_config({"prompts": "webvid"})
    with pytest.raises(ValueError, match="choose one of"):
        SamplingProtocol.from_config({"prompts": "laion"})
    with pytest.raises(ValueError, match="unknown keys"):
        SamplingProtocol.from_config({"pair": True})


def _tiny(preset, data_root, tmp_path, model="cameractrl"):
    cfg = compose([f"experiment={preset}", "scale=tiny", *TINY_DATA, *run_overrides(data_root, tmp_path),
                   *data_overrides(model, data_root)])
    from camvid.models.registry import build_method

    torch.manual_seed(0)
    return cfg, build_method(cfg).eval()


def test_single_video_baseline_sampled_in_pairs_has_clip_f(data_root, tmp_path):
    """CameraCtrl on trajectory pairs with WebVid prompts: the two videos share the prompt and the
    clip's seed, differ in noise, are written as one group, and CLIP-F is computed for them."""
    from test_eval_quality import _tiny_clip

    cfg, method = _tiny("cvd_t2_cameractrl", data_root, tmp_path)
    webvid = data_root / "webvid" / "webvid.csv"
    protocol = SamplingProtocol.from_config({"pairs": True, "prompts": "webvid", "prompts_path": str(webvid)})
    single = eval_split_dataset(cfg, str(data_root))
    dataset = eval_split_dataset(cfg, str(data_root), pairs=True)
    assert single[0]["num_views"] == 1 and dataset[0]["num_views"] == 2
    out = tmp_path / "samples"
    n = min(2, len(dataset))
    for idx in range(n):
        sample_test_clip(method, cfg, dataset, idx, out, base_seed=7, ckpt="random-init", steps=2, protocol=protocol)
    records = read_samples(out)
    assert len(records) == 2 * n
    groups = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    assert len(groups) == n and all(len(g) == 2 for g in groups.values())
    captions = load_prompts(webvid)
    for idx, (name, (a, b)) in enumerate(sorted(groups.items())):
        assert a.sample_id == f"{name}_view0" and (a.view, b.view) == (0, 1)
        assert a.caption == b.caption == prompt_for(captions, idx)[0]  # clip idx's WebVid prompt, both videos
        assert a.meta["protocol"]["prompt_row"] == prompt_for(captions, idx)[1]
        assert a.meta["protocol"]["pair_sampling"] == "independent" and a.seed == b.seed
        assert np.allclose(a.c2w[0], b.c2w[0], atol=1e-6) and not np.allclose(a.c2w, b.c2w)  # one start, 2 paths
        assert not np.array_equal(a.load_video(), b.load_video())
    item = dataset[0]  # the pair's cameras are the folded clip's
    rec = [r for r in records if r.group == sorted(groups)[0]]
    assert np.allclose(rec[1].c2w, item["c2w"][1].numpy(), atol=1e-5)

    clip_dir = _tiny_clip(tmp_path)
    result = run_evaluation({"samples_dir": str(out), "metrics": ["clip"], "weights": {"clip": str(clip_dir)}})
    rows = {r.metric: r for r in result["rows"]}
    assert rows["CLIP-F"].value is not None and f"{n} multi-view groups" in rows["CLIP-F"].note
    assert rows["CLIP-T"].value is not None


def test_cvd_pairs_form_one_group_and_identical_trajectories_give_the_mse(data_root, tmp_path):
    cfg, method = _tiny("cvd_a5_cvd", data_root, tmp_path, model="cvd")
    dataset = eval_split_dataset(cfg, str(data_root))
    kw = dict(base_seed=1, ckpt="random-init", steps=2)
    sample_test_clip(method, cfg, dataset, 0, tmp_path / "pairs", **kw)
    records = read_samples(tmp_path / "pairs")
    assert len({r.group for r in records}) == 1 and len(records) == 2  # one group per pair
    assert records[0].meta["protocol"]["pair_sampling"] == "joint"
    result = run_evaluation({"samples_dir": str(tmp_path / "pairs"), "metrics": ["identical_mse"]})
    row = result["rows"][0]
    assert row.metric == "IdenticalMSE" and row.value is None and "identical trajectories" in row.note

    same = SamplingProtocol(identical_trajectories=True)
    sample_test_clip(method, cfg, dataset, 0, tmp_path / "same", protocol=same, **kw)
    a, b = read_samples(tmp_path / "same")
    assert np.array_equal(a.c2w, b.c2w) and np.array_equal(a.K, b.K)
    assert np.array_equal(a.load_gt_video(), b.load_gt_video())
    result = run_evaluation({"samples_dir": str(tmp_path / "same"), "metrics": ["identical_mse"]})
    row = result["rows"][0]
    expected = np.mean((a.load_video() / 255.0 - b.load_video() / 255.0) ** 2)
    assert row.value == pytest.approx(expected) and row.value > 0 and "1 groups" in row.note
    single = compose(["experiment=cvd_t2_cameractrl", "scale=tiny", *TINY_DATA, *run_overrides(data_root, tmp_path),
                      "data=synthetic"])
    with pytest.raises(ValueError, match="needs trajectory pairs"):  # raised before the model is called
        sample_test_clip(method, single, eval_split_dataset(single, str(data_root)), 0, tmp_path / "x",
                         protocol=same, **kw)


def test_identical_mse_of_known_videos(tmp_path):
    from camvid.data.synthetic import default_intrinsics, make_trajectory
    from camvid.evaluation.layout import write_sample

    K = default_intrinsics(16, 16)
    c2w = make_trajectory("truck", 3, 0)
    base = np.full((3, 16, 16, 3), 100, np.uint8)
    write_sample(tmp_path, "s_view0", base, K, c2w, "x", 0, meta={"group": "s", "view": 0})
    write_sample(tmp_path, "s_view1", base, K, c2w, "x", 0, meta={"group": "s", "view": 1})
    other = base.copy()
    other[:, :8] = 151  # half the pixels 51 grey levels off: MSE = 0.5 * (51 / 255)^2 = 0.02
    write_sample(tmp_path, "t_view0", base, K, c2w, "x", 0, meta={"group": "t", "view": 0})
    write_sample(tmp_path, "t_view1", other, K, c2w, "x", 0, meta={"group": "t", "view": 1})
    write_sample(tmp_path, "u_view0", base, K, c2w, "x", 0, meta={"group": "u", "view": 0})
    write_sample(tmp_path, "u_view1", base, K, make_trajectory("orbit", 3, 0), "x", 0, meta={"group": "u", "view": 1})
    row = run_evaluation({"samples_dir": str(tmp_path), "metrics": ["identical_mse"]})["rows"][0]
    # mp4 (CRF 12) is near-lossless on flat frames: groups s (0) and t (0.02) averaged, u left out
    assert row.value == pytest.approx(0.01, abs=5e-4)
    assert "2 groups" in row.note and "1 groups with different trajectories left out" in row.note
