"""Handing several training batches to the main process in one DataLoader item (hand-off groups).

Why: torch's DataLoader pays a fixed CPU cost for every item a worker hands over (index queue,
result queue and its feeder thread, pickling, wake-ups): about 0.85 ms in the main process and as
much in the worker (benchmarks/data.py, docs/performance.md). At one 16-frame clip per batch that
is an eighth of the clip's decode time, enough to make 1 worker slower than decoding in the main
process on a machine without a free core. A worker therefore sends ``group`` consecutive batches
as one item (:func:`group_batches`) and the main process unpacks them (:func:`in_loader_order`).
Each batch keeps its own shared-memory slot (:mod:`camvid.data.handoff`) and its own running skip
counts, so only torch's per-item machinery is shared.

The batches come out in exactly the order of an ungrouped DataLoader. That order is torch's
round-robin over its workers: worker ``i`` produces global batches ``i, i + W, i + 2W, ...`` and
a worker that has no batches left (the end of a finite pass or of an epoch) drops out of the
rotation. Grouped items arrive in the same round-robin, but one item now carries a worker's next
``group`` batches, so the main process queues them per worker and hands them out one turn at a
time; an explicit end marker per worker tells it when a worker has dropped out. Seeds, resume
positions (``skip_batches`` counts training batches, not items) and what each batch holds are
therefore unchanged, and the resume fingerprint need not record the group size.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["GROUP_KEY", "WORKER_KEY", "END_KEY", "AUTO_CLIPS", "resolve_handoff_group", "group_prefetch",
           "group_batches", "in_loader_order"]

GROUP_KEY = "__handoff_group__"  # the batches of one item, in the worker's order
WORKER_KEY = "__loader_worker__"  # torch's id of the worker that sent the item
END_KEY = "__worker_end__"  # set on the last item of a worker: it has nothing more to send
AUTO_CLIPS = 4  # "auto": enough batches per item that one hand-off carries at least this many clips


def resolve_handoff_group(requested, clips_per_batch: int, num_workers: int) -> int:
    """Batches per DataLoader item for ``data.handoff_group`` (``requested``): ``"auto"`` (or None)
    gives, with exactly one worker, enough batches that an item carries at least
    :data:`AUTO_CLIPS` clips, and no groups with several workers; an integer >= 1 is taken as is
    (1: one batch per item, torch's plain hand-off). Always 1 without workers.

    Why only one worker: that is where torch's per-item CPU decides whether the worker is worth
    having at all (it competes with the main process for the cores), and there groups measured
    faster than single batches in every run; with 2 workers on the same loaded 2-core host,
    grouped loaders delivered fewer clips/s than ungrouped ones in most runs (benchmarks/data.py
    --ungrouped, docs/performance.md), for a reason not established."""
    if requested is None or requested == "auto":
        group = max(1, math.ceil(AUTO_CLIPS / max(1, clips_per_batch))) if num_workers == 1 else 1
    elif isinstance(requested, int) and not isinstance(requested, bool) and requested >= 1:
        group = requested
    else:
        raise ValueError(f"data.handoff_group={requested!r}: expected 'auto' or an integer >= 1 (training batches "
                         "a DataLoader worker hands over at once; 1 = one per hand-off)")
    return group if num_workers > 0 else 1


def group_prefetch(group: int, batches_ahead: int = 4) -> int:
    """DataLoader ``prefetch_factor`` (items per worker) that keeps about ``batches_ahead`` batches
    in flight per worker, at least 2 items so a worker always has the next one to fill."""
    return max(2, math.ceil(batches_ahead / group))


def group_batches(items: Iterator[dict], group: int, worker: int, is_batch: Callable[[dict], bool]) -> Iterator[dict]:
    """Worker side: ``items`` as DataLoader items of up to ``group`` consecutive batches each
    (``{GROUP_KEY: [batch, ...], WORKER_KEY: worker}``); other items (``is_batch`` false: skip
    reports) flush the batches before them and travel alone, tagged with ``worker``. The last item
    also carries ``END_KEY``, so the main process knows this worker is done (a partial last group
    is sent as it is)."""
    pending: list[dict] = []
    held = None  # an item other than a batch, sent once it is known whether it is the last
    for item in items:
        if held is not None:
            yield held
            held = None
        if is_batch(item):
            pending.append(item)
            if len(pending) == group:
                yield {GROUP_KEY: pending, WORKER_KEY: worker}
                pending = []
            continue
        if pending:
            yield {GROUP_KEY: pending, WORKER_KEY: worker}
            pending = []
        held = {**item, WORKER_KEY: worker}
    if held is not None:  # (then nothing is pending)
        yield {**held, END_KEY: True}
    else:
        yield {GROUP_KEY: pending, WORKER_KEY: worker, END_KEY: True}


def in_loader_order(items: Iterator[dict], num_workers: int) -> Iterator[dict]:
    """Main-process side: the batches inside the grouped ``items`` of a DataLoader with
    ``num_workers`` workers, in the order an ungrouped DataLoader would have delivered them
    (round-robin over the workers that still have batches); other items are passed on as they
    arrive (without their worker tag)."""
    queues: list[deque] = [deque() for _ in range(num_workers)]
    ended = [False] * num_workers
    items = iter(items)
    turn = 0
    while not all(ended) or any(queues):
        if queues[turn]:
            yield queues[turn].popleft()
            turn = (turn + 1) % num_workers
            continue
        if ended[turn]:  # out of the rotation, as torch drops an exhausted worker
            turn = (turn + 1) % num_workers
            continue
        item = next(items, None)
        if item is None:  # the DataLoader stopped: every worker is done
            ended = [True] * num_workers
            continue
        worker = item.pop(WORKER_KEY, None)
        if worker is None or not 0 <= worker < num_workers:
            raise RuntimeError(f"grouped hand-off: an item without a valid worker id ({worker!r}) from a "
                               f"DataLoader with {num_workers} workers")
        ended[worker] = ended[worker] or bool(item.pop(END_KEY, False))
        if GROUP_KEY in item:
            queues[worker].extend(item[GROUP_KEY])
        else:
            yield item
