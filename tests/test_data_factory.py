"""Hydra data configs -> prepared synthetic data, training loaders, evaluation data sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from camvid.data import build_eval_dataset, build_train_dataloader, loader_kwargs, prepare_dataset
from camvid.data.loader import ShardMapDataset

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


def _cfg(data_root: Path, **over):
    cfg = {
        "name": "synthetic", "format": "re10k", "root": str(data_root), "views": 1, "pairing": None,
        "prepare": {"num_clips": 5, "num_frames": 9, "height": 16, "width": 16, "seed": 0, "webvid_clips": 2},
        "height": 16, "width": 16, "num_frames": 4, "stride_train": [1, 2], "stride_eval": 2,
        "shuffle_buffer": 4, "epoch_length": 2,
    }
    cfg.update(over)
    return OmegaConf.create(cfg)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("factory") / "synthetic"
    prepare_dataset(_cfg(root))
    return root


def test_prepare_renders_and_shards_once(prepared):
    assert (prepared / "captions.json").is_file() and (prepared / "webvid" / "webvid.csv").is_file()
    manifest = prepared / "shards" / "train" / "manifest.json"
    assert manifest.is_file() and (prepared / "shards" / "test" / "manifest.json").is_file()
    stamp = manifest.stat().st_mtime_ns
    prepare_dataset(_cfg(prepared))  # idempotent
    assert manifest.stat().st_mtime_ns == stamp
    assert not [p for p in prepared.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("pairing,views", [(None, 1), ("fold", 2), ("homography", 2), ("mix", 2)])
def test_training_loader_from_config(prepared, pairing, views):
    over = {"pairing": pairing, "stride_train": [1, 1]}
    if pairing == "homography":
        over["root"] = str(prepared / "webvid")
    loader = build_train_dataloader(_cfg(prepared, **over), batch_size=2, seed=1)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["num_views"] == views and batch["video"].shape == (2 * views, 4, 3, 16, 16)


def test_eval_dataset_directory_and_shards_agree(prepared, tmp_path):
    cfg = _cfg(prepared)
    direct = build_eval_dataset(cfg, split="test")
    assert len(direct) == 1
    sample = direct[0]
    assert sample["frame_stride"] == 2 and sample["cond_index"] == 0
    shards_only = tmp_path / "only_shards"
    shutil.copytree(prepared / "shards", shards_only / "shards")
    from_shards = build_eval_dataset(cfg, root=str(shards_only), split="test")
    assert isinstance(from_shards, ShardMapDataset)
    other = from_shards[0]
    for name in ("video", "K", "c2w", "frame_indices"):
        torch.testing.assert_close(sample[name], other[name])
    batch = from_shards.collate([other])
    assert batch["video"].shape == (1, 4, 3, 16, 16)
    fold = build_eval_dataset(_cfg(prepared, pairing="mix", re10k_root=str(prepared)), split="test", stride=1)
    assert fold.collate([fold[0]])["num_views"] == 2
    with pytest.raises(FileNotFoundError, match="no data under"):
        build_eval_dataset(cfg, root=str(tmp_path), split="test")


def test_bad_config_values(prepared):
    with pytest.raises(ValueError, match="data.pairing='triplet'"):
        loader_kwargs(_cfg(prepared, pairing="triplet"))
    with pytest.raises(ValueError, match=r"stride_train must be \[min, max\]"):
        loader_kwargs(_cfg(prepared, stride_train=[3]))


def test_repository_data_configs_translate(tmp_path):
    files = sorted(CONF.glob("*.yaml"))
    if not files:
        pytest.skip("conf/data not present")
    for path in files:
        cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)},
                                "backbone": {"height": 32, "width": 32, "num_frames": 16},
                                "data": OmegaConf.load(path)})
        data = OmegaConf.to_container(cfg, resolve=True)["data"]
        kwargs = loader_kwargs(data, train=True)
        assert kwargs["pairing"] in ("none", "re10k_fold", "webvid_homography", "cvd_mix"), path.name
        assert kwargs["num_frames"] == 16 and kwargs["stride_min"] <= kwargs["stride_max"]
        if kwargs["pairing"] == "cvd_mix":
            assert kwargs["mix_ratio"] == pytest.approx(0.7)
