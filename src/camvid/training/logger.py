"""Experiment logging: W&B (offline unless WANDB_MODE=online) or nothing. Main process only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["RunLogger", "build_logger"]


class RunLogger:
    """No-op logger; :class:`WandbLogger` overrides the methods."""

    name = "none"

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_video(self, key: str, path: Path, step: int, caption: str | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(RunLogger):
    name = "wandb"

    def __init__(self, project: str, run_dir: Path, config: dict, *, entity=None, mode="offline",
                 group=None, tags=None, name=None, log_videos=True):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.log_videos = log_videos
        self.run = wandb.init(
            project=project, entity=entity, dir=str(run_dir), config=config, mode=mode,
            group=group, tags=list(tags or []), name=name, reinit="finish_previous",
        )

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def log_video(self, key: str, path: Path, step: int, caption: str | None = None) -> None:
        if self.log_videos:
            # A GIF/MP4 file on disk: no moviepy encoding needed.
            self.run.log({key: self._wandb.Video(str(path), caption=caption)}, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
        clean = [[v.item() if isinstance(v, np.generic) else v for v in row] for row in rows]
        self.run.log({key: self._wandb.Table(columns=columns, data=clean)}, step=step)

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg, run_dir: Path, config: dict, is_main: bool, run_name: str | None = None) -> RunLogger:
    """``cfg`` is the ``logger`` config group; non-main processes always get the no-op logger."""
    if not is_main or cfg is None or cfg.get("name", "none") == "none":
        return RunLogger()
    if cfg.name != "wandb":
        raise ValueError(f"logger={cfg.name}: unknown logger; choose logger=wandb or logger=none")
    return WandbLogger(
        project=cfg.project, run_dir=run_dir, config=config, entity=cfg.get("entity"),
        mode=cfg.get("mode", "offline"), group=cfg.get("group"), tags=cfg.get("tags"),
        name=run_name, log_videos=cfg.get("log_videos", True),
    )
