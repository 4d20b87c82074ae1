"""Shared fixtures: offline, deterministic, single-threaded torch, Hydra composition helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    yield


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package); the folder is on
    ``sys.path`` while it loads, for benchmarks that import each other's helpers."""
    import importlib.util
    import sys

    root = REPO / "benchmarks"
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(root))
    return module


def compose(overrides: list[str], config_name: str = "train"):
    """Compose a config like the entry points do (without running the job)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def random_intrinsics(B: int, T: int, image_hw: tuple[int, int], gen):
    """(B, T, 3, 3) float64 pixel intrinsics: focal 0.8-1.4 x width, slight aspect, principal point
    a few pixels off centre (random cameras for the geometry tests)."""
    import torch

    H, W = image_hw
    f64 = torch.float64
    f = (0.8 + 0.6 * torch.rand(B, T, generator=gen, dtype=f64)) * W
    K = torch.zeros(B, T, 3, 3, dtype=f64)
    K[..., 0, 0] = f
    K[..., 1, 1] = f * (0.9 + 0.2 * torch.rand(B, T, generator=gen, dtype=f64))
    K[..., 0, 2] = W / 2 + 4 * torch.randn(B, T, generator=gen, dtype=f64)
    K[..., 1, 2] = H / 2 + 4 * torch.randn(B, T, generator=gen, dtype=f64)
    K[..., 2, 2] = 1
    return K


# --- a tiny synthetic data set and training overrides shared by the training and sampling tests
TINY = ["backbone.height=32", "backbone.width=32", "backbone.num_frames=8", "logger=none"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A tiny synthetic data set (RealEstate10K layout + WebVid-like) with shards, made once."""
    from camvid.training.data import prepare_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    prepare_synthetic(root, num_clips=6, num_frames=20, height=40, width=40, seed=0, webvid_clips=3)
    return root


def jpeg_train_shards(root: Path, *, num_clips: int, frames: int, height: int, width: int, seed: int,
                      shard_size: int) -> Path:
    """Synthetic RealEstate10K training clips (no test split) written as JPEG shards under ``root/shards``."""
    from camvid.data.shards import write_re10k_shards
    from camvid.data.synthetic_writer import write_synthetic_re10k

    write_synthetic_re10k(root, num_clips=num_clips, num_frames=frames, height=height, width=width, seed=seed,
                          test_every=100, texture_size=32)
    out = root / "shards"
    write_re10k_shards(root, "train", out, shard_size=shard_size, image_format="jpg")
    return out


# scale=tiny's own data settings off: the shared session data set is never re-rendered or re-sharded
TINY_DATA = ["data.prepare=null"]


def run_overrides(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, "debug=fast", f"paths.data_dir={data_root.parent}", f"data.root={data_root}",
            f"paths.output_dir={out}", *extra]


def data_overrides(model: str, data_root: Path) -> list[str]:
    if model != "cvd":
        return ["data=synthetic"]
    return ["data=cvd_mix", f"data.re10k_root={data_root}", f"data.webvid_root={data_root}/webvid"]


def dense_reference(plan, q, kv, R):
    """Dense masked attention (float64) on a tile plan's mask (one sample: q (Lq, H, D), kv (R + Lk, 2,
    H, D), registers first); a query with no key and no register gets 0. Returns (output, valid rows)."""
    import torch

    from camvid.attention import dense_masked_attention

    at, Lk = plan.num_queries, plan.num_keys
    mask = torch.zeros(at, R + Lk, dtype=torch.bool)
    mask[:, :R] = True
    for c in plan.chunks:
        for t in range(c.query_ids.shape[0]):
            for i in range(c.query_ids.shape[1]):
                mask[c.query_ids[t, i], R + c.key_ids[t][c.sub_mask[t, i]]] = True
    valid = mask.any(-1)
    q, kv = q.double(), kv.double()
    return dense_masked_attention(q.transpose(0, 1)[None], kv[:, 0].transpose(0, 1)[None],
                                  kv[:, 1].transpose(0, 1)[None], (mask | ~valid[:, None])[None],
                                  valid[None]).transpose(1, 2)[0], valid
