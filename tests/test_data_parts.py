"""Sharding in parts (SLURM arrays): every clip lands in exactly one part, and the loader reads all parts."""

from __future__ import annotations

import pytest

from camvid.data.loader import resolve_units
from camvid.data.shards import read_manifest, write_re10k_shards
from camvid.data.synthetic_writer import write_synthetic_re10k


def test_parts_partition_the_split_and_load_together(tmp_path):
    root = tmp_path / "re10k"
    write_synthetic_re10k(root, num_clips=5, num_frames=4, height=16, width=16, seed=0, test_every=0,
                          texture_size=64)
    out = root / "shards" / "train"
    keys = []
    for part in range(2):
        manifest = write_re10k_shards(root, "train", out / f"part-{part}", shard_size=2, part=part, num_parts=2)
        assert manifest["num_samples"] == (3 if part == 0 else 2)
        keys.append(read_manifest(out / f"part-{part}")["num_samples"])
    kind, urls = resolve_units(root, "train")
    # part-0: 3 clips in shards of 2 -> 2 shards; part-1: 2 clips -> 1 shard
    assert kind == "shards" and len(urls) == 3
    assert sum("part-0" in u.url for u in urls) == 2 and sum("part-1" in u.url for u in urls) == 1
    assert sum(keys) == 5
    with pytest.raises(ValueError, match="part must be in"):
        write_re10k_shards(root, "train", tmp_path / "bad", part=2, num_parts=2)
