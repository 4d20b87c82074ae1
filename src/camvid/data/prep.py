"""The shard-writing engine behind data_prep/re10k.py and data_prep/webvid.py: parts, parallel
workers, resumable shards published atomically, and a summary of what was written and skipped.

Layout of one prepared split (``OUT/<split>/``)::

    part-0000/shard-000000.tar     samples (camvid.data.shards format)
    part-0000/done/shard-000000.json   the shard's record: clips written, clips skipped and why
    part-0000/manifest.json        the shards with samples (what the loader reads), written last
    part-0000/summary.json         this part's totals
    ../summary.json                every part's totals summed (rewritten by each finishing part)

The clips of a split are sorted by id; part ``p`` of ``n`` takes clips ``p, p+n, ...`` and cuts
them into shards of ``shard_size`` consecutive clips, so a shard's content is fixed by the input
and the arguments. A shard is written to a temporary file and renamed into place, then its record
is written (also by rename): a shard counts as done only once its record exists, so a killed run
leaves nothing half-published and a re-run redoes exactly the shards without a record. The
manifest lists only finished shards and is replaced atomically at the end of the part.

A clip that cannot be prepared raises :class:`PrepSkip` with a reason (video missing, undecodable,
too short, timestamps out of range, ...); it is counted and named in the summary, and the run goes on.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from camvid.fsutil import atomic_write_text

__all__ = ["PrepSkip", "PrepResult", "part_dir", "run_part", "merge_summaries", "write_json_atomic",
           "add_output_options"]

SHARD_NAME = "shard-{:06d}.tar"


class PrepSkip(Exception):
    """A clip that cannot be prepared; ``reason`` is one of the summary's skip reasons."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class PrepResult:
    """What a sample builder returns: the sample and per-clip numbers for the summary."""

    sample: dict
    stats: dict  # e.g. {"timestamp_error_ms_max": 1.2, "caption": True}


def add_output_options(parser) -> None:
    """The command-line options every prep script shares: output, shard size, frame size, parallelism."""
    parser.add_argument("--out", required=True, help="output folder for shards and summaries")
    parser.add_argument("--shard-size", type=int, default=100, help="clips per shard")
    parser.add_argument("--short-side", type=int, default=256, help="resize frames to this short side (0: keep)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (one shard each at a time)")
    parser.add_argument("--part", type=int, default=0, help="this task's part (SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-parts", type=int, default=1, help="number of parts (array size)")


def part_dir(out: str | Path, split: str, part: int) -> Path:
    return Path(out) / split / f"part-{part:04d}"


def write_json_atomic(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _write_shard(job: tuple) -> dict:
    """One shard: build each clip's sample, write them, publish tar then record. Runs in a worker."""
    folder, index, clips, build = job
    folder = Path(folder)
    name = SHARD_NAME.format(index)
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    written, skipped, stats = [], [], []
    try:
        with wds.TarWriter(str(tmp), mtime=0) as writer:  # same input, same bytes
            for clip in clips:
                try:
                    result = build(clip)
                except PrepSkip as err:
                    skipped.append({"clip": _clip_id(clip), "reason": err.reason, "message": str(err)})
                    continue
                writer.write(result.sample)
                written.append(result.sample["__key__"])
                stats.append(result.stats)
        if written:
            os.replace(tmp, folder / name)
        else:
            tmp.unlink()
    finally:
        if tmp.exists():
            tmp.unlink()
    record = {"name": name if written else None, "count": len(written), "clips": written, "skipped": skipped,
              "stats": stats}
    write_json_atomic(folder / "done" / f"{name[:-4]}.json", record)
    return record


def _clip_id(clip) -> str:
    return str(getattr(clip, "clip_id", getattr(clip, "key", clip)))


def run_part(
    out: str | Path,
    split: str,
    clips: Sequence,
    build: Callable,
    *,
    shard_size: int = 100,
    part: int = 0,
    num_parts: int = 1,
    workers: int = 1,
    meta: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Prepare part ``part`` of ``num_parts`` of one split; returns (and writes) its summary.

    ``clips`` must be sorted (the same order on every run); ``build(clip)`` returns a
    :class:`PrepResult` or raises :class:`PrepSkip`. It must be picklable (a module-level function
    or a ``functools.partial`` of one) when ``workers > 1``."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    if not 0 <= part < num_parts:
        raise ValueError(f"--part must be in [0, --num-parts), got part={part}, num_parts={num_parts}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    start = time.perf_counter()
    mine = list(clips)[part::num_parts]
    folder = part_dir(out, split, part)
    (folder / "done").mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), i, mine[j : j + shard_size], build) for i, j in enumerate(range(0, len(mine), shard_size))]
    records: dict[int, dict] = {}
    todo = []
    for job in jobs:
        done = folder / "done" / f"{SHARD_NAME.format(job[1])[:-4]}.json"
        record = json.loads(done.read_text()) if done.is_file() else None
        # done: its record exists and so does its tar (a record of a shard whose clips were all skipped has no tar)
        if record is not None and (record["name"] is None or (folder / record["name"]).is_file()):
            records[job[1]] = record
        else:
            todo.append(job)
    resumed = len(records)
    if resumed:
        log(f"{split} part {part}: {resumed} of {len(jobs)} shards already done, {len(todo)} to write")
    if workers == 1 or len(todo) <= 1:
        for job in todo:
            records[job[1]] = _report(_write_shard(job), job, len(jobs), split, log)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for job, rec in zip(todo, pool.map(_write_shard, todo)):
                records[job[1]] = _report(rec, job, len(jobs), split, log)
    ordered = [records[i] for i in sorted(records)]
    manifest = {**(meta or {}), "split": split, "part": part, "num_parts": num_parts,
                "num_samples": sum(r["count"] for r in ordered),
                "shards": [{"name": r["name"], "count": r["count"]} for r in ordered if r["name"]]}
    write_json_atomic(folder / "manifest.json", manifest)
    summary = _summarize(ordered, split, len(mine))
    summary.update(part=part, num_parts=num_parts, shards_written_now=len(todo), shards_done_before=resumed,
                   seconds=round(time.perf_counter() - start, 1))
    write_json_atomic(folder / "summary.json", summary)
    return summary


def _report(record: dict, job: tuple, total: int, split: str, log) -> dict:
    log(f"{split} shard {job[1] + 1}/{total}: {record['count']} written, {len(record['skipped'])} skipped")
    return record


def _summarize(records: list[dict], split: str, num_clips: int) -> dict:
    reasons: Counter = Counter()
    skipped: dict[str, list[str]] = {}
    for r in records:
        for s in r["skipped"]:
            reasons[s["reason"]] += 1
            skipped.setdefault(s["reason"], []).append(s["clip"])
    stats = [s for r in records for s in r["stats"]]
    out = {"split": split, "clips": num_clips, "written": sum(r["count"] for r in records),
           "skipped": dict(reasons), "skipped_clips": skipped,
           "examples": [s["message"] for r in records for s in r["skipped"]][:20],
           "shards": sum(1 for r in records if r["name"])}
    if stats and "caption" in stats[0]:
        out["without_caption"] = sum(1 for s in stats if not s["caption"])
    errs = [s["timestamp_error_ms_max"] for s in stats if "timestamp_error_ms_max" in s]
    if errs:
        means = [s["timestamp_error_ms_mean"] for s in stats]
        out["timestamp_error_ms"] = {"max": round(max(errs), 3), "mean": round(sum(means) / len(means), 3)}
    return out


def merge_summaries(out: str | Path) -> dict:
    """Sum every ``<split>/part-*/summary.json`` under ``out`` into ``out/summary.json``."""
    out = Path(out)
    total: dict = {"splits": {}}
    for path in sorted(out.glob("*/part-*/summary.json")):
        s = json.loads(path.read_text())
        t = total["splits"].setdefault(s["split"], {"parts": 0, "clips": 0, "written": 0, "skipped": {},
                                                     "skipped_clips": {}, "shards": 0})
        t["parts"] += 1
        for k in ("clips", "written", "shards"):
            t[k] += s[k]
        for reason, n in s["skipped"].items():
            t["skipped"][reason] = t["skipped"].get(reason, 0) + n
            t["skipped_clips"].setdefault(reason, []).extend(s["skipped_clips"].get(reason, []))
        if "without_caption" in s:
            t["without_caption"] = t.get("without_caption", 0) + s["without_caption"]
        if "timestamp_error_ms" in s:
            prev = t.get("timestamp_error_ms", {"max": 0.0})
            t["timestamp_error_ms"] = {"max": max(prev["max"], s["timestamp_error_ms"]["max"])}
    total["written"] = sum(t["written"] for t in total["splits"].values())
    total["skipped"] = sum(sum(t["skipped"].values()) for t in total["splits"].values())
    write_json_atomic(out / "summary.json", total)
    return total
