"""Skipped samples: counted by reason and by shard, per worker, then summed over workers and ranks.

A bad sample never trains and never passes silently. Where it is found (a loader worker) it
becomes a :class:`SkipEvent`; the worker's :class:`SkipCounter` keeps running totals and ships a
snapshot of them with every batch (``batch["data_health"]``), so counts from worker processes
reach the main process without shared state. :class:`DataHealth` (main process) keeps the latest
snapshot of each worker and sums them; :func:`merge_reports` sums the reports of several ranks.

The main process enforces ``max_skip_fraction`` on the sums: once enough samples have been
attempted, a larger skipped fraction stops the run with an error naming the worst shards. "Enough"
is ``min_samples`` and at least 20 times the largest single skip event: shards are drawn whole, so
one unreadable 100-sample shard drawn first must not stop a run over thousands of good ones. A
worker stops on its own only when none of its first ``min_samples`` attempted samples was usable
(a stream in which every sample is bad would otherwise never yield a batch).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

__all__ = [
    "SKIP_REASONS",
    "SkipEvent",
    "SkipCounter",
    "DataHealth",
    "TooManySkips",
    "merge_reports",
    "check_report",
    "format_report",
    "HEALTH_KEY",
    "gather_report",
    "report_metrics",
]

# Reasons a sample is skipped (keys of the "skipped" counts).
SKIP_REASONS = {
    "metadata": "sample fields disagree with its json (source kind, frame count) or the json is missing",
    "no_cameras": "a RealEstate10K sample without pose.txt",
    "bad_pose": "pose rows fail validation (non-finite in float32, rotation not orthonormal, focal <= 0)",
    "frame_count": "frames and pose rows differ in number, or a frame is missing",
    "corrupt_image": "a frame that does not decode",
    "too_short": "fewer frames than the window needs",
    "truncated_shard": "the partial last sample (and every missing one) of a tar cut short",
    "unreadable_shard": "a shard listed in the manifest that cannot be read",
    "other": "any other bad sample",
}

HEALTH_KEY = "data_health"  # batch field carrying the worker's snapshot; popped by the loader


class TooManySkips(RuntimeError):
    """More samples were skipped than ``max_skip_fraction`` allows."""


@dataclass(frozen=True)
class SkipEvent:
    """One or more skipped samples (``count`` > 1 for an unreadable or truncated shard)."""

    reason: str
    shard: str  # shard url or data file the sample came from
    message: str  # names the file/member (and line for pose errors)
    count: int = 1


def _empty_report() -> dict:
    return {"samples": 0, "skipped": {}, "shards": {}, "examples": [], "largest_event": 0}


class SkipCounter:
    """One worker's running counts. ``samples`` counts samples attempted (used + skipped)."""

    def __init__(self, where: str, max_skip_fraction: float = 0.1, min_samples: int = 32, max_examples: int = 5):
        self.where = where
        self.max_skip_fraction, self.min_samples, self.max_examples = max_skip_fraction, min_samples, max_examples
        self.used = 0
        self.reasons: Counter = Counter()
        self.shards: Counter = Counter()
        self.examples: list[str] = []
        self.largest_event = 0

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def ok(self) -> None:
        self.used += 1

    def skip(self, event: SkipEvent) -> None:
        reason = event.reason if event.reason in SKIP_REASONS else "other"
        self.reasons[reason] += event.count
        self.shards[event.shard] += event.count
        self.largest_event = max(self.largest_event, event.count)
        if len(self.examples) < self.max_examples:
            self.examples.append(f"[{reason}] {event.message}")
        warnings.warn(f"skipping {event.count} sample(s) ({reason}): {event.message} "
                      f"({self.skipped} skipped so far on {self.where})", stacklevel=2)
        if self.used == 0 and self.skipped >= self.min_samples:
            raise _too_many(self.report(), self.max_skip_fraction, f"{self.where} (no usable sample at all)")

    def report(self) -> dict:
        return {"samples": self.used + self.skipped, "skipped": dict(self.reasons), "shards": dict(self.shards),
                "examples": list(self.examples), "largest_event": self.largest_event}


def merge_reports(reports) -> dict:
    """Sum reports (of workers, or of ranks)."""
    out = _empty_report()
    skipped: Counter = Counter()
    shards: Counter = Counter()
    for rep in reports:
        out["samples"] += int(rep["samples"])
        skipped.update(rep["skipped"])
        shards.update(rep["shards"])
        out["examples"].extend(rep["examples"][: max(0, 5 - len(out["examples"]))])
    out["skipped"], out["shards"] = dict(skipped), dict(shards)
    out["largest_event"] = max([int(rep.get("largest_event", 0)) for rep in reports] + [0])
    return out


def _total_skipped(report: dict) -> int:
    return sum(report["skipped"].values())


def check_report(report: dict, max_skip_fraction: float, min_samples: int = 32, where: str = "data") -> None:
    """Raise :class:`TooManySkips` when more than ``max_skip_fraction`` of at least ``min_samples``
    attempted samples were skipped; the message names the worst shards and example errors."""
    skipped, attempted = _total_skipped(report), report["samples"]
    enough = max(min_samples, 20 * int(report.get("largest_event", 0)))
    if attempted < enough or skipped <= max_skip_fraction * attempted:
        return
    raise _too_many(report, max_skip_fraction, where)


def _too_many(report: dict, max_skip_fraction: float, where: str) -> TooManySkips:
    skipped, attempted = _total_skipped(report), report["samples"]
    worst = sorted(report["shards"].items(), key=lambda kv: -kv[1])[:5]
    return TooManySkips(
        f"{where}: {skipped} of {attempted} samples skipped ({skipped / attempted:.0%}), more than "
        f"data.max_skip_fraction={max_skip_fraction}. By reason: {report['skipped']}. Worst shards: "
        + ", ".join(f"{name} ({n})" for name, n in worst)
        + (". Examples: " + " | ".join(report["examples"]) if report["examples"] else "")
    )


def format_report(report: dict) -> str:
    """One line for logs: ``12 of 400 samples skipped (3.0%): no_cameras=10, truncated_shard=2``."""
    skipped, attempted = _total_skipped(report), report["samples"]
    if not skipped:
        return f"0 of {attempted} samples skipped"
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(report["skipped"].items()))
    return f"{skipped} of {attempted} samples skipped ({skipped / max(attempted, 1):.1%}): {reasons}"


class DataHealth:
    """Main-process view: the latest snapshot of every worker (of every stream), summed."""

    def __init__(self, max_skip_fraction: float = 0.1, min_samples: int = 32):
        self.max_skip_fraction, self.min_samples = max_skip_fraction, min_samples
        self._latest: dict[str, dict] = {}

    def update(self, snapshots: dict[str, dict]) -> bool:
        """Store the snapshots; True when some worker has skipped a sample (only then can
        :meth:`check` fail, so the loader skips it for healthy data)."""
        self._latest.update(snapshots)
        return any(rep["skipped"] for rep in self._latest.values())

    def report(self) -> dict:
        return merge_reports(self._latest.values())

    def check(self, report: dict | None = None) -> None:
        check_report(report or self.report(), self.max_skip_fraction, self.min_samples)

    def metrics(self, report: dict | None = None) -> dict:
        """Flat numbers for a logger: ``data/skipped``, ``data/skip_fraction``, ``data/skipped_<reason>``."""
        rep = report or self.report()
        skipped = _total_skipped(rep)
        out = {"data/samples": rep["samples"], "data/skipped": skipped,
               "data/skip_fraction": skipped / max(rep["samples"], 1)}
        out.update({f"data/skipped_{k}": v for k, v in rep["skipped"].items()})
        return out


def gather_report(loader, accelerator=None) -> dict:
    """The skip report of ``loader`` summed over all ranks, checked against its
    ``max_skip_fraction`` (raises :class:`TooManySkips` on every rank alike). A collective when
    several processes run: call it on every rank at the same step."""
    health = getattr(loader, "health", None)
    mine = health.report() if health is not None else _empty_report()
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        reports = gather_object([mine])
    else:
        reports = [mine]
    total = merge_reports(reports)
    if health is not None:
        health.check(total)
    return total


def report_metrics(report: dict) -> dict:
    """Flat numbers for a logger (``data/skipped``, ``data/skip_fraction``, ``data/skipped_<reason>``)."""
    return DataHealth().metrics(report)
