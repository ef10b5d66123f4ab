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


def splits(work: int) -> bool:
    """Whether ``run_over`` hands out ``work`` elements' kernel in pieces (given at least two to hand out)."""
    return WORKERS > 1 and work >= PARALLEL_MIN


def run_over(kernel, count: int, *args, work: int | None = None) -> None:
    """``kernel(*args, lo, hi)`` over ``[0, count)``; in pieces on the pool when ``work`` (elements,
    default ``count``) is large enough to pay for the hand-out.

    Each thread, the caller included, claims the next piece until none is
    left, so a thread that is late or slowed (a pool busy with other kernels,
    more threads than cores) takes fewer pieces instead of leaving the last
    ones to run alone; the caller never waits for a pool thread to start. A
    piece that fails stops every thread from claiming another, and the caller
    raises the first error once no piece runs."""
    global _split_calls
    work = count if work is None else work
    if count < 2 or not splits(work):
        if count:
            kernel(*args, 0, count)
        return
    ranges = pieces(count, WORKERS * PIECES_PER_WORKER)
    claims = iter(range(len(ranges)))
    state = threading.Condition()  # guards claims, running, errors and pool_ran
    running, errors, pool_ran = 0, [], False

    def take(on_pool: bool) -> None:
        nonlocal running, pool_ran
        while True:
            with state:
                index = next(claims, None)
                if index is None:
                    return
                running += 1
            try:
                kernel(*args, *ranges[index])
            except BaseException as error:  # KeyboardInterrupt too: the call fails, no thread claims another piece
                with state:
                    errors.append(error)
                    for _ in claims:
                        pass
                if not on_pool:
                    raise
                return
            finally:
                with state:
                    running -= 1
                    pool_ran = pool_ran or on_pool
                    state.notify_all()

    futures = []
    try:
        for _ in range(min(WORKERS, len(ranges)) - 1):
            futures.append(shared_pool().submit(take, True))
    except RuntimeError:  # no thread to be had (a thread limit, the interpreter shutting down): fewer takers
        pass
    try:
        take(False)
    finally:
        # Every piece that started, on any thread (even one whose future a failed submit lost), is counted in
        # ``running``: none writes into the caller's arrays once it is 0. A taker that has not started finds no
        # piece left: it is cancelled, not waited for (the pool may be busy for long).
        with state:
            for _ in claims:
                pass
            state.wait_for(lambda: running == 0)
        for future in futures:
            future.cancel()
    if errors:
        raise errors[0]
    if pool_ran:
        with _pool_lock:
            _split_calls += 1


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
