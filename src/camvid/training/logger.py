"""Experiment logging: W&B (offline unless WANDB_MODE=online) or nothing. Main process only.

:func:`finish_runs_on_exit` is the task wrapper of the entry points: whatever ends a task (success,
an exception, Ctrl-C or a SIGTERM from the scheduler), an open W&B run is finished with an exit code
that says so, instead of being left "running" forever in the W&B UI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["RunLogger", "build_logger", "finish_runs_on_exit", "exit_code_of"]

log = logging.getLogger(__name__)


class RunLogger:
    """No-op logger; :class:`WandbLogger` overrides the methods."""

    name = "none"

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_video(self, key: str, path: Path, step: int, caption: str | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(RunLogger):
    name = "wandb"

    def __init__(self, project: str, run_dir: Path, config: dict, *, entity=None, mode="offline",
                 group=None, tags=None, name=None, log_videos=True, run_id=None):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.log_videos = log_videos
        self.run = wandb.init(
            project=project, entity=entity, dir=str(run_dir), config=config, mode=mode,
            group=group, tags=list(tags or []), name=name, reinit="finish_previous",
            # a fixed id + resume="allow": a requeued job or a later stage continues the same W&B run
            id=run_id, resume="allow" if run_id else None,
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

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def build_logger(cfg, run_dir: Path, config: dict, is_main: bool, run_name: str | None = None,
                 run_id: str | None = None) -> RunLogger:
    """``cfg`` is the ``logger`` config group; non-main processes always get the no-op logger."""
    if not is_main or cfg is None or cfg.get("name", "none") == "none":
        return RunLogger()
    if cfg.name != "wandb":
        raise ValueError(f"logger={cfg.name}: unknown logger; choose logger=wandb or logger=none")
    return WandbLogger(
        project=cfg.project, run_dir=run_dir, config=config, entity=cfg.get("entity"),
        mode=cfg.get("mode", "offline"), group=cfg.get("group"), tags=cfg.get("tags"),
        name=run_name, log_videos=cfg.get("log_videos", True), run_id=run_id,
    )


def exit_code_of(err: BaseException) -> int:
    """The process exit code an exception ends a task with (shell conventions: 128 + signal)."""
    if isinstance(err, SystemExit):
        code = err.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(err, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return 1


def _finish_open_wandb_run(exit_code: int) -> None:
    wandb = sys.modules.get("wandb")  # never import W&B just to find out no run is open
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    try:
        run.finish(exit_code=exit_code)
    except Exception as err:  # finishing must not hide the error that ended the task
        log.warning("could not finish the W&B run: %s", err)


class TerminatedBySignal(SystemExit):
    """SIGTERM (e.g. a scheduler's time limit) turned into an exception, so cleanup code runs."""


def _raise_on_sigterm(signum, frame):
    raise TerminatedBySignal(128 + signum)


@contextlib.contextmanager
def finish_runs_on_exit() -> Iterator[None]:
    """Finish an open W&B run however the wrapped task ends, then let the ending propagate.

    SIGTERM, whose default action kills the process without running any cleanup, is turned into
    :class:`TerminatedBySignal` (exit code 143) while the task runs, unless another handler (a
    launcher's) is installed already.
    """
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    except BaseException as err:
        _finish_open_wandb_run(exit_code_of(err) or 1)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
