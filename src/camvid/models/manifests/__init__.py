"""Official state-dict layouts (name, shape, dtype, trainable) of the public models.

The ``.tsv`` files list one state-dict entry per line: ``name<TAB>shape<TAB>dtype<TAB>trainable``,
with ``#`` header lines naming the source repository, commit and config. They were produced by
building each public model from its official code and config (no weights read); see
docs/models.md. Used to check that our modules reproduce the official key layout exactly, so
released checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST_DIR = Path(__file__).resolve().parent

__all__ = ["ManifestEntry", "load_manifest", "available_manifests", "MANIFEST_DIR"]


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool


def available_manifests() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.tsv"))


def load_manifest(name: str, prefix: str | None = None, strip_prefix: bool = True) -> dict[str, ManifestEntry]:
    """Entries of manifest ``name`` (file stem), optionally only those under ``prefix``.

    With ``strip_prefix`` the returned keys have ``prefix`` removed, so they compare directly with a
    sub-module's ``state_dict()``.
    """
    path = MANIFEST_DIR / f"{name}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"unknown manifest {name!r}; available: {', '.join(available_manifests())}")
    out: dict[str, ManifestEntry] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, dtype, trainable = line.split("\t")
        if prefix is not None:
            if not key.startswith(prefix):
                continue
            if strip_prefix:
                key = key[len(prefix):]
        out[key] = ManifestEntry(key, tuple(json.loads(shape)), dtype, trainable == "1")
    return out
