"""Loader throughput against the JPEG-decode limit of the same frames, measured in the same run.

Writes ``--clips`` clips of 16 frames at 256x256 as JPEG (quality 95) shards, then for each worker
count W in ``--workers``:

- loader: clips/s delivered by ``build_dataloader`` (training stream, batch 1, 16 frames, no
  resize) asked for W DataLoader workers, from the arrival of the first batch to that of the last
  (worker start-up and shut-down excluded; ``start ms`` shows the time to the first batch). The
  loader caps W at the cores this process may use (``camvid.data.workers``; ``started`` is the
  number it started); ``--no-cap`` starts W regardless;
- decode limit: clips/s of decoding exactly those JPEG frames (``camvid.data.decode.decode_frames``,
  the loader's decoder, into a reused array) in max(started, 1) processes, each on as many threads
  as the loader's workers decode with (``threads``: ``camvid.data.workers.decode_threads``, e.g. 2
  for a lone worker on 2 cores, 1 in the main process), that hold the frames already and do nothing
  else (a pool forked after the frames were read; only clip numbers and CPU times cross processes).

Where workers decode on several threads, the decode limit is also taken with one thread per process
(the same processes, ``ratio_one_thread``), so a lone worker's threads show against both.
``ratio`` = loader / decode limit; the loader's other work (tar reading, pose parsing, batching,
handing uint8 video to the main process) is what it loses. CPU ms per clip (all processes of each
side; for the loader the workers' start-up is included) shows the same from the CPU side: ``CPU
ratio`` = decode CPU / loader CPU. ``vs fewer`` = the loader's clips/s over that of the row
above (the next smaller worker count), median of the per-round quotients. Rounds are interleaved (per round, per W: decode, then loader)
so that load from other programs affects both sides alike; the table shows the median of
``--repeats`` rounds and the range of the per-round ratios. ``main``/``workers`` split the
loader's CPU per clip between the main process and its workers (where the hand-off costs). A
decoder table compares PIL, simplejpeg, PyTurboJPEG and OpenCV (where installed: ``pip install
-e ".[bench]"``) decoding the same frames in one process, in interleaved rounds, with the largest
pixel difference from PIL and whether each rejects JPEGs damaged mid-scan. A last line measures
torch's DataLoader alone at the loader's pace (:func:`handoff_floor`): what its per-batch hand-off
costs without any of the loader's work, the floor of the ``main``/``workers`` split.

The loader runs with its default hand-off groups (``handoff_group="auto"``: a single worker hands
over enough batches per DataLoader item for 4 clips, several workers one batch per item;
``camvid.data.grouping``; the ``group`` column);
``--handoff-group N`` sets them, and ``--ungrouped`` also times every worker count with one batch
per item (``handoff_group=1``) in the same rounds, with the grouped/ungrouped quotient and the
ungrouped loader's ``vs fewer``.

    .venv/bin/python benchmarks/data.py                          # 32 clips, workers 0 1 2 4, 5 repeats
    .venv/bin/python benchmarks/data.py --workers 0 2 --repeats 3 --json out.json
    .venv/bin/python benchmarks/data.py --workers 2 4 --no-cap   # what 4 workers on 2 cores cost
    .venv/bin/python benchmarks/data.py --workers 0 1 2 --batch-size 4   # torch's hand-off shared by 4 clips
    .venv/bin/python benchmarks/data.py --ungrouped               # hand-off groups against one batch per item

The timed window (``--batches``, default 160) is long enough that a fresh worker's one-time costs
inside it (its first shared-memory slots, up to ``(prefetch_factor + 2) x group + 2``: a new segment and
first-touch page faults each) are a small part, as over a training epoch (docs/performance.md).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads OpenMP: one thread per process, as in workers
from torch.utils.data import IterableDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

FRAMES, SIZE = 16, 256


def _frame(rng: np.random.Generator) -> np.ndarray:
    """Photo-like content: smooth colour fields, edges and fine texture (JPEG ~30-40 KB at q95)."""
    coarse = rng.random((8, 8, 3))
    img = np.kron(coarse, np.ones((SIZE // 8, SIZE // 8, 1)))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img += 0.25 * np.sin(2 * np.pi * (rng.uniform(2, 8) * xx + rng.uniform(2, 8) * yy))[..., None]
    img += 0.08 * rng.standard_normal((SIZE, SIZE, 3))
    return (np.clip(img, 0, 1.2) / 1.2 * 255).astype(np.uint8)


def write_clips(out: Path, num_clips: int, shard_size: int, seed: int = 0) -> list[list[bytes]]:
    """RealEstate10K-style JPEG shards (a pose file per clip) and the JPEG bytes of every frame."""
    import webdataset as wds
    from PIL import Image

    from camvid.geometry.cameras import format_pose_line

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    shards, clips, writer = [], [], None
    for c in range(num_clips):
        if c % shard_size == 0:
            if writer is not None:
                writer.close()
            shards.append({"name": f"shard-{len(shards):06d}.tar", "count": 0})
            writer = wds.TarWriter(str(out / shards[-1]["name"]), mtime=0)  # as data_prep writes them
        frames = []
        for _ in range(FRAMES):
            buf = io.BytesIO()
            Image.fromarray(_frame(rng)).save(buf, format="JPEG", quality=95)
            frames.append(buf.getvalue())
        poses = ["bench://clip"] + [format_pose_line(t * 33_333, [0.9, 0.9, 0.5, 0.5], np.eye(4)[:3] +
                                                     np.array([[0, 0, 0, 0.01 * t]] * 3))
                                    for t in range(FRAMES)]
        sample = {"__key__": f"clip{c:05d}", "pose.txt": ("\n".join(poses) + "\n").encode(), "txt": b"bench",
                  "json": json.dumps({"num_frames": FRAMES, "image_format": "jpg", "source": "re10k"}).encode()}
        sample.update({f"{t:05d}.jpg": f for t, f in enumerate(frames)})
        writer.write(sample)
        shards[-1]["count"] += 1
        clips.append(frames)
    writer.close()
    (out / "manifest.json").write_text(json.dumps({"source": "re10k", "image_format": "jpg",
                                                   "num_samples": num_clips, "shards": shards}))
    return clips


def _identity(batch):
    return batch


class _BusyBatches(IterableDataset):
    """Burns CPU per batch and yields loader-shaped batches: :func:`handoff_floor`."""

    def __init__(self, n: int, work_s: float, batch_size: int):
        self.n, self.work_s, self.batch_size = n, work_s, batch_size

    def __iter__(self):
        from camvid.data.handoff import SlotVideo

        b = self.batch_size
        batch = {"num_views": 1, "K": np.zeros((b, FRAMES, 3, 3), np.float32),
                 "c2w": np.zeros((b, FRAMES, 4, 4), np.float32), "caption": ["a caption"] * b,
                 "cond_index": np.zeros(b, np.int64), "frame_indices": np.zeros((b, FRAMES), np.int64),
                 "frame_stride": np.ones(b, np.int64), "key": ["shard-000000.tar:clip00000"] * b,
                 "video": SlotVideo(os.getpid(), 0, 64, (b, FRAMES, 3, SIZE, SIZE), (1, 1, 1, 1, 1)),
                 "data_health": {"re10k/rank0/worker0": {"samples": 1, "skipped": {}, "shards": {}, "examples": [],
                                                         "largest_event": 0}}}
        for _ in range(self.n):
            start = time.thread_time()
            while time.thread_time() - start < self.work_s:
                pass
            yield dict(batch)


_CLIPS: list[list[bytes]] = []  # the frames; set before the decode pools fork, so tasks are clip numbers
_OUT: list[np.ndarray] = []  # this process's output array, reused clip after clip (as the loader's slots)


def _decode_clip(index: int) -> float:
    """Decode clip ``index`` of ``_CLIPS`` as the loader does (:func:`camvid.data.decode.decode_frames`,
    on this process's decode threads); returns the CPU seconds of this process (all its threads)."""
    from camvid.data.decode import decode_frames

    start = time.process_time()
    _OUT[:] = [decode_frames([(f, "bench") for f in _CLIPS[index]], _OUT[0] if _OUT else None)]
    return time.process_time() - start


def _set_threads(threads: int) -> None:
    from camvid.data.decode import set_decode_threads

    set_decode_threads(threads)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def decode_limit(processes: int, n: int, pool=None, threads: int = 1) -> tuple[float, float]:
    """(clips/s, CPU ms per clip) decoding ``n`` clips (cycling through ``_CLIPS``) in ``processes``
    processes: ``pool`` (already started, holding the frames since the fork, its processes on their
    own decode threads) or this process on ``threads`` decode threads. Only clip numbers and CPU
    times travel between processes, so the rate is the decoders' alone."""
    work = [i % len(_CLIPS) for i in range(n)]
    if pool is None:
        _set_threads(threads)
    try:
        start = time.perf_counter()
        cpu = sum(pool.map(_decode_clip, work, chunksize=1) if pool is not None else map(_decode_clip, work))
        return n / (time.perf_counter() - start), 1e3 * cpu / n
    finally:
        _set_threads(1)


def started_workers(workers: int, cap: bool = True) -> int:
    """The workers ``build_dataloader(num_workers=workers, cap_workers=cap)`` starts here."""
    from camvid.data.workers import effective_workers

    return effective_workers(workers, cap)


def worker_threads(started: int, requested: int | str = "auto") -> int:
    """Decode threads of each of ``started`` workers (``build_dataloader(decode_threads=requested)``)."""
    from camvid.data.workers import decode_threads

    return decode_threads(requested, started)


def loader_rate(shards: Path, workers: int, n: int, cap: bool = True, batch_size: int = 1,
                group: int | str = "auto", decode_threads: int | str = "auto") -> tuple[float, float, float, float, int]:
    """(clips/s, CPU ms per clip of the main process, of its workers, ms to the first batch, batches
    per hand-off) of the training stream: ``n`` batches of ``batch_size`` clips timed from the
    arrival of the first batch to that of the last (worker start-up and shut-down are not
    throughput; the CPU figure includes them, and the first clip, since worker CPU is only known
    once they exit). ``group``, ``decode_threads``: ``build_dataloader(handoff_group=..., decode_threads=...)``."""
    from camvid.data.loader import build_dataloader

    loader = build_dataloader(str(shards), num_frames=FRAMES, height=SIZE, width=SIZE, stride_min=1, stride_max=1,
                              batch_size=batch_size, num_workers=workers, shuffle_buffer=1, epoch_length=n + 1,
                              seed=1, cap_workers=cap, handoff_group=group, decode_threads=decode_threads)
    cpu0, kids0 = time.process_time(), _children_cpu()
    begin = time.perf_counter()
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    got = 0
    for _ in it:
        got += 1
        end = time.perf_counter()
    del it  # the epoch has ended: workers exit and are joined
    main, kids = time.process_time() - cpu0, _children_cpu() - kids0
    clips = batch_size * (got + 1)
    return (batch_size * got / (end - start), 1e3 * main / clips, 1e3 * kids / clips, 1e3 * (start - begin),
            loader.handoff_group)


def handoff_floor(n: int, work_ms: float, batch_size: int = 1) -> dict[str, float]:
    """What torch's DataLoader alone costs per batch with one worker, at the loader's pace: a
    worker that burns ``work_ms`` of CPU per batch (as decoding does) and yields a dict shaped like
    a loader batch (small numpy arrays, strings, a slot reference, a skip report). CPU ms per batch
    of the main process and of the worker beyond ``work_ms`` (its start-up included, as in the
    loader table): the hand-off's floor, which the loader's own ``main``/``workers`` split is
    compared against."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_BusyBatches(n, work_ms / 1e3, batch_size), batch_size=None, num_workers=1,
                        prefetch_factor=4, collate_fn=_identity)
    cpu0, kids0 = time.process_time(), _children_cpu()
    got = sum(1 for _ in loader)
    main, kids = time.process_time() - cpu0, _children_cpu() - kids0
    return {"main_cpu_ms": 1e3 * main / got, "worker_cpu_ms_beyond_work": 1e3 * kids / got - work_ms}


def decode_thread_cpu(shards: Path, n: int, rounds: int, skip: int = 20) -> dict[str, float | str]:
    """CPU ms per clip of the thread that decodes (``time.thread_time`` between consecutive
    batches, after ``skip`` batches of warm-up), i.e. the loader's critical path when the other
    threads and processes have a core of their own: in-process (0 workers), in one worker with
    read-ahead (the default) and in one worker without it, all decoding on one thread (the worker's
    ``decode_threads=1``) so that the figure is a whole clip's; medians of ``rounds`` interleaved
    rounds. Needs fork (the batches are stamped by a patched ``ClipStream._with_health``, which the
    workers inherit)."""
    import camvid.data.loader as loader_mod

    if mp.get_start_method() != "fork":
        return {"skipped": "needs the fork start method"}
    plain = loader_mod.ClipStream._with_health

    def stamped(batch, ident, counter, ring=None):
        batch = plain(batch, ident, counter, ring)
        batch["bench_thread_cpu"] = np.array(time.thread_time())
        return batch

    out: dict[str, list] = {}
    loader_mod.ClipStream._with_health = staticmethod(stamped)
    try:
        for name, workers, ahead in [("in_process", 0, None), ("worker", 1, None),
                                     ("worker_no_read_ahead", 1, 0)] * rounds:
            loader = loader_mod.build_dataloader(
                str(shards), num_frames=FRAMES, height=SIZE, width=SIZE, stride_min=1, stride_max=1, batch_size=1,
                num_workers=workers, shuffle_buffer=1, epoch_length=n + skip, seed=1, cap_workers=False,
                decode_threads=1)
            if ahead is not None:
                loader.dataset.read_ahead = ahead
            stamps = [float(b["bench_thread_cpu"]) for b in loader][skip:]
            out.setdefault(name, []).append(1e3 * (stamps[-1] - stamps[0]) / (len(stamps) - 1))
    finally:
        loader_mod.ClipStream._with_health = staticmethod(plain)
    return {name: _median(values) for name, values in out.items()}


def _damaged(frame: bytes) -> bytes:
    """``frame`` with 100 bytes in the middle of its entropy-coded data zeroed: what a bad disk
    block or a bad copy leaves; the markers are intact, so only the decoder can notice."""
    bad = bytearray(frame)
    mid = len(bad) // 2
    bad[mid:mid + 100] = bytes(100)
    return bytes(bad)


def decoders(clips: list[list[bytes]], n: int, rounds: int) -> dict[str, dict | str]:
    """Per decoder, in this process on the same ``n`` frames: frames/s (median of ``rounds``
    interleaved rounds, so load from other programs hits every decoder alike), its ratio to PIL
    (median of the per-round quotients), the largest pixel difference from PIL's output, and
    whether it rejects a JPEG damaged mid-scan (:func:`_damaged`). A string says why a decoder is
    missing."""
    from camvid.data.decode import decode_with

    frames = [f for clip in clips for f in clip][:n]
    fns: dict = {}
    out: dict[str, dict | str] = {}
    for name in ("pil", "simplejpeg", "turbojpeg", "opencv"):
        try:
            fns[name] = decode_with(name)
            fns[name](frames[0])
        except (ImportError, OSError, RuntimeError, AttributeError) as err:
            fns.pop(name, None)
            out[name] = f"not available ({type(err).__name__}: {str(err).splitlines()[0][:60]})"
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for f in frames:
                fn(f)
            rates[name].append(len(frames) / (time.perf_counter() - start))
    reference = [fns["pil"](f).astype(np.int16) for f in frames]
    damaged = [_damaged(f) for f in frames[:FRAMES]]
    for name, fn in fns.items():
        diff = max(int(np.abs(fn(f).astype(np.int16) - ref).max()) for f, ref in zip(frames, reference))
        rejected = 0
        for f in damaged:
            try:
                fn(f)
            except Exception:  # noqa: BLE001 - every decoder raises its own type
                rejected += 1
        out[name] = {"frames_per_s": _median(rates[name]),
                     "vs_pil": _median([a / b for a, b in zip(rates[name], rates["pil"])]),
                     "max_abs_diff_vs_pil": diff, "damaged_rejected": f"{rejected}/{len(damaged)}"}
    return {name: out[name] for name in ("pil", "simplejpeg", "turbojpeg", "opencv")}


def _median(values: list[float]) -> float:
    return float(np.median(values))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=32, help="distinct clips written (16 JPEG frames each)")
    p.add_argument("--batches", type=int, default=160, help="clips timed per measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the table shows their medians")
    p.add_argument("--no-cap", action="store_true",
                   help="start every requested worker (build_dataloader(cap_workers=False)); by default the loader "
                        "caps them at this process's cores, as training does")
    p.add_argument("--batch-size", type=int, default=1,
                   help="clips per loader batch (torch's hand-off costs per batch, so larger batches share it)")
    p.add_argument("--handoff-group", default="auto",
                   help="batches a worker hands over per DataLoader item (build_dataloader(handoff_group=...)): "
                        "'auto' (1 worker: enough for 4 clips; more workers: 1) or an integer >= 1 (1: one batch "
                        "per item)")
    p.add_argument("--ungrouped", action="store_true",
                   help="also time the loader with one batch per hand-off (handoff_group=1) in every round, for "
                        "every worker count that starts workers, and compare")
    p.add_argument("--decode-threads", default="auto",
                   help="threads each worker decodes a clip with (build_dataloader(decode_threads=...)): 'auto' (the "
                        "worker's share of the cores) or an integer >= 1; the decode limit uses as many per process")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    for flag in ("handoff_group", "decode_threads"):  # 'auto' or an integer
        value = getattr(args, flag)
        if value != "auto":
            try:
                setattr(args, flag, int(value))
            except ValueError:
                p.error(f"--{flag.replace('_', '-')} {value!r}: 'auto' or an integer >= 1")
    if args.repeats < 1 or args.batches < 2 or args.clips < 1 or min(args.workers) < 0 or args.batch_size < 1:
        p.error("--repeats, --clips and --batch-size must be >= 1, --batches >= 2, --workers >= 0")
    loader_batches = max(2, args.batches // args.batch_size)  # --batches counts clips

    from camvid.data.decode import jpeg_backend
    from camvid.data.workers import available_cores

    cap = not args.no_cap
    started = {w: started_workers(w, cap) for w in args.workers}
    threads = {w: worker_threads(started[w], args.decode_threads) for w in args.workers}
    logging.getLogger("camvid.data.workers").setLevel(logging.ERROR)  # the table's `started` column says it
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        _CLIPS[:] = write_clips(shards, args.clips, shard_size=4)
        size_kb = np.mean([len(f) for c in _CLIPS for f in c]) / 1024
        rounds: dict[int, list[dict]] = {w: [] for w in args.workers}
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        pools = {w: ctx.Pool(started[w], initializer=_set_threads, initargs=(threads[w],))
                 for w in args.workers if started[w] > 1}
        # the same processes on one thread each, for rows whose workers decode on several
        single = {w: ctx.Pool(started[w], initializer=_set_threads, initargs=(1,))
                  for w in args.workers if started[w] > 1 and threads[w] > 1}
        try:
            for pool in (*pools.values(), *single.values()):
                pool.map(_decode_clip, range(len(pool._pool)))  # start and warm the processes
            for _ in range(args.repeats):
                for w in args.workers:
                    decode, decode_cpu = decode_limit(max(started[w], 1), loader_batches * args.batch_size,
                                                      pools.get(w), threads[w])
                    decode_one = decode
                    if threads[w] > 1:
                        decode_one, _ = decode_limit(max(started[w], 1), loader_batches * args.batch_size,
                                                     single.get(w), 1)
                    loader, main_cpu, worker_cpu, first_ms, group = loader_rate(
                        shards, w, loader_batches, cap, args.batch_size, args.handoff_group, args.decode_threads)
                    loader_cpu = main_cpu + worker_cpu
                    rounds[w].append({"loader": loader, "decode": decode, "ratio": loader / decode, "start_ms": first_ms,
                                      "decode_one_thread": decode_one, "ratio_one_thread": loader / decode_one,
                                      "loader_cpu_ms": loader_cpu, "main_cpu_ms": main_cpu,
                                      "worker_cpu_ms": worker_cpu, "decode_cpu_ms": decode_cpu,
                                      "cpu_ratio": decode_cpu / loader_cpu, "group": group})
                    if args.ungrouped and started[w] > 0:
                        plain, plain_main, plain_worker, _, _ = loader_rate(shards, w, loader_batches, cap,
                                                                            args.batch_size, 1, args.decode_threads)
                        rounds[w][-1].update(ungrouped=plain, ungrouped_cpu_ms=plain_main + plain_worker,
                                             ungrouped_main_cpu_ms=plain_main)
        finally:
            for pool in (*pools.values(), *single.values()):
                pool.terminate()
        dec = decoders(_CLIPS, 16 * FRAMES, max(args.repeats, 5))
        thread_cpu = decode_thread_cpu(shards, args.batches, args.repeats)
        floor = handoff_floor(loader_batches, args.batch_size * _median([r["decode_cpu_ms"] for w in args.workers
                                                                         for r in rounds[w]]), args.batch_size)

    keys = ("loader", "decode", "ratio", "decode_one_thread", "ratio_one_thread", "loader_cpu_ms", "main_cpu_ms", "worker_cpu_ms", "decode_cpu_ms", "cpu_ratio",
            "start_ms")
    rows = [{"workers": w, "started": started[w], "threads": threads[w], "decode_processes": max(started[w], 1), **{k: _median([r[k] for r in rounds[w]]) for k in keys},
             "ratio_range": [min(r["ratio"] for r in rounds[w]), max(r["ratio"] for r in rounds[w])],
             "rounds": rounds[w]} for w in args.workers]
    for row in rows:
        row["group"] = row["rounds"][0]["group"]
        if "ungrouped" in row["rounds"][0]:
            for k in ("ungrouped", "ungrouped_cpu_ms", "ungrouped_main_cpu_ms"):
                row[k] = _median([r[k] for r in row["rounds"]])
            row["x_ungrouped"] = _median([r["loader"] / r["ungrouped"] for r in row["rounds"]])
    for prev, row in zip(rows, rows[1:]):  # same-round comparison: load that drifts between rounds cancels
        row["vs_fewer"] = _median([a["loader"] / b["loader"] for a, b in zip(row["rounds"], prev["rounds"])])
        if "ungrouped" in row:  # the ungrouped loader against the row above as it ran before (ungrouped or 0)
            row["ungrouped_vs_fewer"] = _median([a["ungrouped"] / b.get("ungrouped", b["loader"])
                                                 for a, b in zip(row["rounds"], prev["rounds"])])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {"clip": f"{FRAMES}x{SIZE}x{SIZE} JPEG q95, {size_kb:.0f} KB/frame", "decoder": jpeg_backend(),
              "cpus": os.cpu_count(), "available_cores": available_cores(), "cap_workers": cap,
              "load_average_1min": load, "python": platform.python_version(),
              "repeats": args.repeats, "batches": args.batches, "batch_size": args.batch_size, "rows": rows,
              "decoders_frames_per_s": dec, "decode_thread_cpu_ms_per_clip": thread_cpu,
              "handoff_floor_ms_per_batch": floor}
    print(f"clips: {result['clip']}; loader decoder: {result['decoder']}; {result['cpus']} CPUs "
          f"({result['available_cores']} available), workers {'capped at them' if cap else 'not capped (--no-cap)'}; "
          f"load average {load:.1f} at the end; medians of {args.repeats} interleaved rounds of "
          f"{loader_batches * args.batch_size} clips in batches of {args.batch_size}")
    print(f"{'workers':>7} {'started':>7} {'threads':>7} {'group':>5} {'loader clips/s':>15} {'decode-only clips/s':>20} {'ratio':>6} "
          f"{'(range)':>11}   {'loader CPU ms/clip':>18} {'(main+workers)':>14} {'decode CPU ms/clip':>18} "
          f"{'CPU ratio':>9} {'start ms':>8} "
          f"{'vs fewer':>8}")
    for r in rows:
        lo, hi = r["ratio_range"]
        split = f"{r['main_cpu_ms']:.1f}+{r['worker_cpu_ms']:.1f}"
        print(f"{r['workers']:>7} {r['started']:>7} {r['threads']:>7} {r['group']:>5} {r['loader']:>15.2f} {r['decode']:>20.2f} {r['ratio']:>6.2f} "
              f"{f'({lo:.2f}-{hi:.2f})':>11}   {r['loader_cpu_ms']:>18.1f} "
              f"{split:>14} {r['decode_cpu_ms']:>18.1f} "
              f"{r['cpu_ratio']:>9.2f} {r['start_ms']:>8.0f} {r['vs_fewer'] if 'vs_fewer' in r else '':>8.3}")
    if any(r["threads"] > 1 for r in rows):
        print("the decode limit with one thread per process (the same processes; rows whose workers decode on several "
              "threads): decode-only clips/s, loader / it (median of per-round quotients)")
        for r in rows:
            if r["threads"] > 1:
                print(f"{r['workers']:>7} {r['started']:>7} {1:>7} {r['decode_one_thread']:>20.2f} "
                      f"{r['ratio_one_thread']:>6.2f}")
    if any("ungrouped" in r for r in rows):
        print("the same rounds with one batch per hand-off (handoff_group=1): clips/s, loader CPU ms/clip (main), "
              "grouped / ungrouped clips/s, ungrouped vs the row above (medians of per-round quotients)")
        for r in rows:
            if "ungrouped" in r:
                print(f"{r['workers']:>7} {r['started']:>7} {r['threads']:>7} {1:>5} {r['ungrouped']:>15.2f} "
                      f"{r['ungrouped_cpu_ms']:>8.1f} ({r['ungrouped_main_cpu_ms']:.1f})  x{r['x_ungrouped']:.3f}  "
                      f"vs fewer {r['ungrouped_vs_fewer'] if 'ungrouped_vs_fewer' in r else '':>6.3}")
    print("CPU ms per clip of the decoding thread, one decode thread (the critical path when the rest has a core of "
          "its own): "
          + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in thread_cpu.items()))
    print(f"torch DataLoader alone, 1 worker at the same pace (a worker burning the decode CPU of a batch): main "
          f"process {floor['main_cpu_ms']:.2f} ms CPU per batch, worker {floor['worker_cpu_ms_beyond_work']:.2f} ms "
          f"beyond the work (start-up included)")
    print("JPEG decoders, one process, same frames, interleaved rounds (frames/s; x PIL, median of per-round "
          "quotients; largest pixel difference from PIL; damaged-mid-scan JPEGs rejected):")
    for name, v in dec.items():
        shown = (f"{v['frames_per_s']:8.0f}  x{v['vs_pil']:.2f}  max |diff| {v['max_abs_diff_vs_pil']}  "
                 f"damaged rejected {v['damaged_rejected']}" if isinstance(v, dict) else str(v))
        print(f"  {name:>10}: {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
