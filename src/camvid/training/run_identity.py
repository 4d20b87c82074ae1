"""A run's W&B identity: one id per run directory (a requeued or resumed job logs into the same W&B
run), a name "<preset>-seed<seed>" for preset runs, and the table sweep's group (logger.group)."""

from __future__ import annotations

import secrets
from pathlib import Path

from camvid.fsutil import atomic_write_text

__all__ = ["run_name", "run_id"]

ID_FILE = "wandb_run_id.txt"


def run_name(cfg, run_dir: Path) -> str:
    row = cfg.get("experiment_row")
    return f"{row}-seed{cfg.seed}" if row else run_dir.name


def run_id(run_dir: Path) -> str:
    """The W&B run id of ``run_dir``: made once (main process), then read back by every later stage
    or requeued job of the same directory."""
    path = Path(run_dir) / ID_FILE
    if not path.is_file():
        atomic_write_text(path, secrets.token_hex(8) + "\n")
    return path.read_text().strip()
