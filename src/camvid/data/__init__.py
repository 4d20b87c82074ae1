"""RealEstate10K & WebVid data: the synthetic renderer and writer, WebDataset shards, loaders,
CVD folding, homography pairs and the 7:3 mix (docs/data.md).

The entry points below are imported lazily, so ``import camvid.data.synthetic`` (the renderer)
does not pull in webdataset and torch's data-loading machinery.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_dataloader": "camvid.data.loader",
    "build_synthetic_dataloader": "camvid.data.loader",
    "Re10kDirectoryDataset": "camvid.data.loader",
    "WebVidDirectoryDataset": "camvid.data.loader",
    "ShardMapDataset": "camvid.data.loader",
    "build_train_dataloader": "camvid.data.factory",
    "build_eval_dataset": "camvid.data.factory",
    "prepare_dataset": "camvid.data.factory",
    "loader_kwargs": "camvid.data.factory",
    "collate": "camvid.data.samples",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'camvid.data' has no attribute {name!r}")
