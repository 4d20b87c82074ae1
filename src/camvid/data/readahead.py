"""Read-ahead: a background thread pulls the next items of an iterator (the next samples, read
from their tar and opened) while the caller works on the current one.

Why: a DataLoader worker spends most of each sample in the JPEG decoder, which releases the GIL
(simplejpeg), and the rest in Python, which holds it: reading and splitting the tar, parsing and
checking the pose file and metadata (about 1 ms of a 16-frame 256 x 256 clip's 12). With that in a
second thread the two overlap, so a worker delivers a clip in about the decode time plus the
sample's own bookkeeping; that pays for the worker's hand-off to the main process
(benchmarks/data.py, docs/performance.md). Only DataLoader workers
read ahead: in the main process (``num_workers=0``) the training loop's own Python would compete
with the thread for the GIL.

The order of items is unchanged (one producer, a FIFO queue), so seeds and resume positions are
those of a plain iteration; an exception raised upstream is raised to the caller at its position.
Closing the returned generator (end of the epoch, a worker shut down) stops the thread: it closes
the upstream iterator itself (so the upstream's clean-up runs in the thread that ran it) and the
caller waits for it to finish (up to ``join_s``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

__all__ = ["read_ahead"]

_END = object()


def read_ahead(items: Iterator, depth: int = 2, poll_s: float = 0.1, join_s: float = 10.0) -> Iterator:
    """The items of ``items`` in order, at most ``depth`` of them read ahead by a daemon thread."""
    if depth < 1:
        raise ValueError(f"read-ahead depth must be >= 1, got {depth}")
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=poll_s)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not offer((True, item)):
                    break
            else:
                offer((True, _END))
        except BaseException as err:  # handed to the caller, raised there
            offer((False, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # stopped early: the upstream generators' clean-up runs here
                close()

    thread = threading.Thread(target=pump, name="camvid-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = box.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        if thread is not threading.current_thread():
            thread.join(join_s)
