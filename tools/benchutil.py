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
    fn()
    times = []
    for _ in range(repeat):
        wait(device)
        start = time.perf_counter()
        fn()
        wait(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
