"""Run a compiled kernel over an index range on one shared pool of threads.

The kernels of ``_philox_numba`` and ``_rans_numba`` are serial ``nogil``
functions over a range ``[lo, hi)`` of blocks, rows or lanes. This module
splits the range into pieces and runs them side by side.

Why not numba's own parallel regions (``prange``): its ``workqueue`` layer
aborts the whole process when two Python threads enter parallel code at once
("Concurrent access has been detected"), and its OpenMP layer spins against
torch's OpenMP runtime on few cores (decoding ran 6x slower). A plain thread
pool has neither problem: any number of caller threads may share it, pieces
never wait on other pieces (so it cannot deadlock), and the pieces of
concurrent calls interleave instead of being serialised behind a lock.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

# Below this many elements a split costs more to hand out than it saves.
PARALLEL_MIN = 1 << 18
PIECES_PER_WORKER = 4  # pieces claimed in turn: the last, run while another thread may idle, is short


def worker_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


WORKERS = worker_count()

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_split_calls = 0  # calls that ran in pieces; tests read it through split_calls()


def _forget_pool_in_child() -> None:
    """A forked child has none of its parent's threads: it builds its own pool on first use."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="permcodec")
        return _pool


def split_calls() -> int:
    """How many kernel calls have run in pieces on the pool in this process."""
    return _split_calls


def pieces(count: int, parts: int) -> list[tuple[int, int]]:
    """``[0, count)`` cut into at most ``parts`` contiguous, non-empty, near-equal ranges."""
    parts = max(1, min(parts, count))
    return [(count * i // parts, count * (i + 1) // parts) for i in range(parts) if count]


def run_over(kernel, count, *args, work: int | None = None) -> None:
    """``kernel(*args, lo, hi)`` over ``[0, count)``; in pieces on the pool when ``work`` (elements,
    default ``count``) is large enough to pay for the hand-out.

    Each thread, the caller included, claims the next piece until none is
    left, so a thread that is late or slowed (a pool busy with other kernels,
    more threads than cores) takes fewer pieces instead of leaving the last
    ones to run alone; the caller never waits for a pool thread to start."""
    global _split_calls
    work = count if work is None else work
    if WORKERS == 1 or count < 2 or work < PARALLEL_MIN:
        if count:
            kernel(*args, 0, count)
        return
    ranges = pieces(count, WORKERS * PIECES_PER_WORKER)
    claims = iter(range(len(ranges)))
    claim_lock = threading.Lock()

    def take() -> None:
        while True:
            with claim_lock:
                index = next(claims, None)
            if index is None:
                return
            kernel(*args, *ranges[index])

    futures = [shared_pool().submit(take) for _ in range(min(WORKERS, len(ranges)) - 1)]
    with _pool_lock:
        _split_calls += 1
    try:
        take()
    finally:
        # A taker that has not started would find no piece left: cancelled, it is not waited for (the pool may be
        # busy for long). One that started may still run a piece, which writes into the caller's arrays.
        started = [future for future in futures if not future.cancel()]
        wait(started)
    for future in started:
        future.result()


class Started:
    """Kernel pieces running on the shared pool (``start_over``)."""

    def __init__(self, futures: list):
        self.futures = futures

    def wait(self) -> None:
        """Return once every piece ended; raise the first piece's error, if any."""
        wait(self.futures)
        for future in self.futures:
            future.result()


ENTRY_WAIT = 0.002  # a pool busy with other kernels may not start a piece at once; the caller goes on then


def start_over(kernel, ranges: list[tuple[int, int]], *args) -> Started:
    """``kernel(*args, lo, hi)`` for each ``(lo, hi)`` of ``ranges`` on the shared pool, without waiting for them
    to end, so that the caller's Python runs beside them. A piece needs the GIL to enter its kernel, and a caller
    busy in Python would keep it waiting up to the interpreter's switch interval (5 ms): so each piece is handed
    the GIL as it starts (the caller waits, up to ENTRY_WAIT seconds, until it has entered)."""
    def piece(lo: int, hi: int, entering: threading.Event) -> None:
        entering.set()
        kernel(*args, lo, hi)

    if WORKERS == 1:  # one thread asked for: the pieces run here, now
        for lo, hi in ranges:
            kernel(*args, lo, hi)
        return Started([])
    futures = []
    for lo, hi in ranges:
        entering = threading.Event()
        futures.append(shared_pool().submit(piece, lo, hi, entering))
        entering.wait(ENTRY_WAIT)
    return Started(futures)
