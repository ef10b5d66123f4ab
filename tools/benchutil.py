"""Timing helpers shared by the benchmarks in tools/ (the package never imports them)."""

from __future__ import annotations

import statistics
import time

import torch


def wait(device) -> None:
    """Block until queued work on ``device`` is done, so a timer sees all of it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn, repeat: int, device="cpu") -> float:
    """The fastest of ``repeat`` timed calls of ``fn``, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        wait(device)
        start = time.perf_counter()
        fn()
        wait(device)
        best = min(best, time.perf_counter() - start)
    return best


def median_seconds(fn, repeat: int, device="cpu") -> float:
    """The median of ``repeat`` timed calls of ``fn``, after one untimed warm-up call (so caches and numba's
    kernels are warm)."""
    return median_seconds_and_cores(fn, repeat, device)[0]


def median_seconds_and_cores(fn, repeat: int, device="cpu") -> tuple[float, float]:
    """(``median_seconds``, cores): the CPU time this process spent in the timed calls, all its threads
    together, over their wall time. Two threads that each had a core of their own give up to 2; a program
    on one thread, or two threads that a busy neighbour left one core, about 1."""
    fn()
    times, cpu, wall = [], 0.0, 0.0
    for _ in range(repeat):
        wait(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wait(device)
        times.append(time.perf_counter() - start)
        cpu += time.process_time() - start_cpu
        wall += times[-1]
    return statistics.median(times), cpu / wall
