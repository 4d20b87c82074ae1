"""What exact resume depends on, recorded in each checkpoint and compared on resume.

A resumed run continues bit-identically only if the data stream (data root, shard list, batch size,
grad accumulation, workers, world size, seed) and the trained modules (model, attn, backbone) are
those of the run that wrote the checkpoint. A mismatch is an error listing every difference;
``resume_mismatch=warn`` turns it into a warning for intended changes (a bigger machine, a new
shard set), and the run then continues from the checkpoint's weights, optimizer and step.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from camvid.data.workers import effective_workers

__all__ = ["ResumeMismatchError", "run_fingerprint", "fingerprint_differences", "check_resume_compatible",
           "RESUME_POLICIES"]

log = logging.getLogger(__name__)

RESUME_POLICIES = ("error", "warn")
# fingerprint key -> the option a user would change (for messages)
_OPTIONS = {
    "world_size": "number of processes",
    "batch_size": "trainer.batch_size",
    "grad_accum": "trainer.grad_accum",
    "num_workers": "trainer.num_workers",
    "seed": "seed",
    "data_roots": "data.root",
    "shards": "data shard list",
    "model": "model",
    "attn": "attn",
    "backbone": "backbone",
    "camvid_version": "camvid version",
}

_NOTES = {"num_workers": " (workers started: the request capped at this process's CPU cores unless "
                         "trainer.cap_workers=false)"}


class ResumeMismatchError(RuntimeError):
    """Resuming a checkpoint with settings that change what the run computes."""


def _data_roots(data_cfg) -> list[str]:
    roots = [data_cfg.get(k) for k in ("root", "re10k_root", "webvid_root")]
    return sorted({str(Path(r).resolve()) for r in roots if r})


def _shard_listing(roots: list[str]) -> str:
    """SHA-256 over each root's shard manifests (or, unsharded, its file listing), names and sizes.

    Reads only manifests and directory entries, never the data, so it costs milliseconds.
    """
    h = hashlib.sha256()
    for root in map(Path, roots):
        manifests = sorted(root.glob("shards/*/manifest.json")) + sorted(root.glob("*/shards/*/manifest.json"))
        if manifests:
            for m in manifests:
                h.update(m.relative_to(root).as_posix().encode())
                h.update(m.read_bytes())
        elif root.is_dir():
            for split in sorted(p for p in root.iterdir() if p.is_dir()):
                for entry in sorted(split.iterdir()):
                    if entry.is_file():
                        h.update(f"{split.name}/{entry.name}:{entry.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def _camvid_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("camvid")
    except PackageNotFoundError:  # a checkout run without `pip install -e .`
        return "unknown"


def run_fingerprint(cfg: DictConfig, world_size: int) -> dict:
    """The settings exact resume depends on (written into every checkpoint's trainer_state.json)."""
    roots = _data_roots(cfg.data)
    return {
        "world_size": int(world_size),
        "batch_size": int(cfg.trainer.batch_size),
        "grad_accum": int(cfg.trainer.grad_accum),
        # the workers actually started (the stream depends on them), not the number asked for
        "num_workers": effective_workers(int(cfg.trainer.num_workers), bool(cfg.trainer.get("cap_workers", True))),
        "seed": int(cfg.seed),
        "data_roots": roots,
        "shards": _shard_listing(roots),
        "model": str(cfg.model.name),
        "attn": str(cfg.attn.name),
        "backbone": str(cfg.backbone.name),
        "camvid_version": _camvid_version(),
    }


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """One line per setting that differs, ``option: checkpoint X, now Y``."""
    out = []
    for key, option in _OPTIONS.items():
        if key not in saved:
            out.append(f"{option}: not recorded in the checkpoint, now {json.dumps(now.get(key))}")
        elif saved[key] != now.get(key):
            out.append(f"{option}: checkpoint {json.dumps(saved[key])}, now {json.dumps(now.get(key))}"
                       + _NOTES.get(key, ""))
    return out


def check_resume_compatible(trainer_state: dict, now: dict, policy: str, checkpoint: Path) -> list[str]:
    """Raise :class:`ResumeMismatchError` (``policy='error'``) or warn (``'warn'``) on differences."""
    if policy not in RESUME_POLICIES:
        raise ValueError(f"resume_mismatch={policy}: choose one of {', '.join(RESUME_POLICIES)}")
    diffs = fingerprint_differences(trainer_state.get("resume", {}), now)
    if not diffs:
        return diffs
    listing = "\n  ".join(diffs)
    if policy == "error":
        raise ResumeMismatchError(
            f"{checkpoint} was written by a run with different settings, so resuming would not continue it "
            f"exactly:\n  {listing}\nRestore those settings, start a new run directory, or pass "
            "resume_mismatch=warn if the change is intended.")
    log.warning("resume_mismatch=warn: resuming %s with changed settings (not an exact continuation):\n  %s",
                checkpoint, listing)
    return diffs
