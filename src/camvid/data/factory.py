"""From a Hydra ``data`` config (conf/data/*.yaml) to loaders and evaluation data sets.

The config schema (``format``, ``pairing``, ``stride_train``, ``stride_eval``, ``prepare``, ...) is
translated into the plain keyword arguments of :func:`camvid.data.loader.build_dataloader`, so the
loader itself stays free of config objects.

========================  ==================================================================
``pairing`` in config     loader pairing
========================  ==================================================================
null / none               ``none`` (single videos)
fold / re10k_fold         ``re10k_fold``
homography / ...          ``webvid_homography``
mix / cvd_mix             ``cvd_mix`` (``re10k_root`` folds : ``webvid_root`` homographies)
========================  ==================================================================
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from torch.utils.data import DataLoader

from camvid.data.loader import (
    Re10kDirectoryDataset,
    ShardMapDataset,
    WebVidDirectoryDataset,
    _shard_dirs,
    build_dataloader,
)
from camvid.data.shards import write_re10k_shards
from camvid.data.synthetic_writer import ensure_synthetic_dataset
from camvid.fsutil import share_like_umask

__all__ = ["loader_pairing", "prepare_dataset", "loader_kwargs", "build_train_dataloader", "build_eval_dataset"]

_PAIRINGS = {
    None: "none",
    "none": "none",
    "fold": "re10k_fold",
    "re10k_fold": "re10k_fold",
    "homography": "webvid_homography",
    "webvid_homography": "webvid_homography",
    "mix": "cvd_mix",
    "cvd_mix": "cvd_mix",
}


def _get(cfg: Mapping, name: str, default=None):
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


def loader_pairing(data_cfg: Mapping) -> str:
    pairing = data_cfg.get("pairing")
    if pairing not in _PAIRINGS:
        raise ValueError(f"data.pairing={pairing!r} is not one of {sorted(k for k in _PAIRINGS if k)} (or null)")
    return _PAIRINGS[pairing]


def _atomic_shards(root: Path, split: str) -> None:
    """Shard ``root/<split>`` into ``root/shards/<split>`` unless done; safe under concurrent callers."""
    target = root / "shards" / split
    if (target / "manifest.json").is_file() or not (root / split).is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp makes a 0700 directory: give it the umask's mode so collaborators can read it once renamed
    tmp = share_like_umask(tempfile.mkdtemp(prefix=f".{split}.", dir=target.parent))
    try:
        write_re10k_shards(root, split, tmp, shard_size=16, with_depth=False)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "manifest.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_dataset(data_cfg: Mapping) -> None:
    """Render (and shard) the synthetic set when ``data.prepare`` asks for it; a no-op otherwise.

    ``prepare`` keys: ``num_clips``, ``num_frames``, ``height``, ``width``, ``seed`` and optionally
    ``webvid_clips``, ``texture_size``, ``test_every`` (every N-th clip is a test clip; 6 with the 5
    trajectory kinds puts every kind in the test split, 5 puts only ``mixed`` there). Idempotent and safe if several ranks call it at once, but
    cheaper when only the main process does and the others wait at a barrier.
    """
    prep = data_cfg.get("prepare")
    if not prep:
        return
    root = Path(str(data_cfg["root"]))
    ensure_synthetic_dataset(
        root,
        num_clips=int(_get(prep, "num_clips", 20)),
        num_frames=int(_get(prep, "num_frames", 32)),
        height=int(_get(prep, "height", 64)),
        width=int(_get(prep, "width", 64)),
        seed=int(_get(prep, "seed", 0)),
        webvid_clips=int(_get(prep, "webvid_clips", 0)),
        texture_size=prep.get("texture_size") if hasattr(prep, "get") else None,
        test_every=int(_get(prep, "test_every", 5)),
    )
    for split in ("train", "test"):
        _atomic_shards(root, split)


def _roots(data_cfg: Mapping, pairing: str) -> tuple[str, str | None]:
    root = str(data_cfg["root"])
    if pairing == "cvd_mix":
        re10k = str(_get(data_cfg, "re10k_root", root))
        webvid = data_cfg.get("webvid_root")
        if webvid is None:
            webvid = str(Path(root) / "webvid")
        return re10k, str(webvid)
    return root, None


def loader_kwargs(data_cfg: Mapping, *, train: bool = True) -> dict:
    """Plain :func:`build_dataloader` keyword arguments from a data config."""
    pairing = loader_pairing(data_cfg)
    root, webvid_root = _roots(data_cfg, pairing)
    stride_train = list(_get(data_cfg, "stride_train", [1, 10]))
    stride_eval = int(_get(data_cfg, "stride_eval", 8))
    if len(stride_train) != 2:
        raise ValueError(f"data.stride_train must be [min, max], got {stride_train}")
    kwargs = dict(
        root=root,
        pairing=pairing,
        num_frames=int(data_cfg["num_frames"]),
        height=int(data_cfg["height"]),
        width=int(data_cfg["width"]),
        stride_min=int(stride_train[0]) if train else stride_eval,
        stride_max=int(stride_train[1]) if train else stride_eval,
        shuffle_buffer=int(_get(data_cfg, "shuffle_buffer", 100)),
        epoch_length=data_cfg.get("epoch_length"),
        train=train,
        max_skip_fraction=float(_get(data_cfg, "max_skip_fraction", 0.1)),
        skip_check_min_samples=int(_get(data_cfg, "skip_check_min_samples", 100)),
        # batches per worker hand-off (camvid.data.grouping); the stream itself does not depend on it
        handoff_group=_get(data_cfg, "handoff_group", "auto"),
        # threads per loader worker that decode a clip's JPEG frames (camvid.data.workers.decode_threads)
        decode_threads=_get(data_cfg, "decode_threads", "auto"),
        # the conditioning frame of a training clip: random (CamI2V) or frame 0 (model.rand_cond_frame)
        random_cond=bool(_get(data_cfg, "random_cond", True)),
    )
    if webvid_root is not None:
        kwargs["webvid_root"] = webvid_root
        weights = list(_get(data_cfg, "mix_weights", [0.7, 0.3]))
        kwargs["mix_ratio"] = float(weights[0]) / float(sum(weights))
    if "homography_strength" in data_cfg:
        kwargs["homography_strength"] = float(data_cfg["homography_strength"])
    return kwargs


def build_train_dataloader(
    data_cfg: Mapping,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    epoch: int = 0,
    skip_batches: int = 0,
    cap_workers: bool = True,
) -> DataLoader:
    """The training loader of a data config (resampled, endless unless ``epoch_length`` is set);
    ``cap_workers``: see :mod:`camvid.data.workers`."""
    return build_dataloader(**loader_kwargs(data_cfg, train=True), batch_size=batch_size, num_workers=num_workers,
                            seed=seed, rank=rank, world_size=world_size, epoch=epoch, skip_batches=skip_batches,
                            cap_workers=cap_workers)


def build_eval_dataset(data_cfg: Mapping, root: str | None = None, split: str = "test", stride: int | None = None,
                       seed: int = 0):
    """Map-style evaluation data set (``len``, ``[i]``, ``.collate``): fixed stride (``stride`` or
    ``data.stride_eval``), first window, conditioning frame 0. ``root`` overrides the config's.
    Reads the directory layout when ``root/<split>`` holds pose files, else shards."""
    pairing = loader_pairing(data_cfg)
    if pairing == "cvd_mix":
        pairing = "re10k_fold"  # evaluation of a mixed-trained model runs on RealEstate10K pairs
        default_root = str(_get(data_cfg, "re10k_root", data_cfg["root"]))
    else:
        default_root = str(data_cfg["root"])
    root_path = Path(root or default_root)
    stride = int(stride if stride is not None else _get(data_cfg, "stride_eval", 8))
    common = dict(num_frames=int(data_cfg["num_frames"]), height=int(data_cfg["height"]),
                  width=int(data_cfg["width"]), stride_min=stride, stride_max=stride, train=False,
                  pairing=pairing, seed=seed)
    if not root_path.exists():
        raise FileNotFoundError(f"evaluation data root does not exist: {root_path}")
    if pairing == "webvid_homography":
        if (root_path / "webvid.csv").is_file():
            return WebVidDirectoryDataset(root_path, **common)
        return ShardMapDataset(_shard_dir(root_path, split), **common)
    if (root_path / split).is_dir() and any((root_path / split).glob("*.txt")):
        return Re10kDirectoryDataset(root_path, split, **common)
    return ShardMapDataset(_shard_dir(root_path, split), **common)


def _shard_dir(root: Path, split: str) -> list[Path]:
    dirs = _shard_dirs(root, split)  # a manifest, or the part-* folders of a prepared split
    if dirs is not None:
        return dirs
    raise FileNotFoundError(
        f"no data under {root}: expected pose files in {root / split} or a shard manifest.json in "
        f"{root}, {root / split} or {root / 'shards' / split} (or in their part-* folders)"
    )
