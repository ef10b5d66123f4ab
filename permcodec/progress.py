"""Progress a person reads: a bar on a terminal, a plain line at each tenth of the work in a log.

A bar redrawn with carriage returns becomes one huge line in a log file, so
when stderr is not a terminal each tenth of the work prints its own line. No
estimate of the time left is shown: the first tensors wait for numba to compile
its kernels, which would make any early estimate hours too long.
"""

from __future__ import annotations

import sys
import time

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}]"


def progress(total: int, desc: str, unit: str, enabled: bool = True, stream=None):
    """An object with ``update(n)`` and ``close()``: a tqdm bar, log lines, or nothing when not ``enabled``."""
    stream = stream or sys.stderr
    if not enabled:
        return Silent()
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=True, file=stream,
                    bar_format=BAR_FORMAT)
    return LogLines(total, desc, unit, stream)


class Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **figures) -> None:
        pass

    def close(self) -> None:
        pass


class LogLines:
    """``desc: 30% (9,800 of 32,600 weights), 1.2 s`` at each tenth of ``total``, and once at the end."""

    def __init__(self, total: int, desc: str, unit: str, stream):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.done, self.tenths_shown, self.started = 0, 0, time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        tenths = 10 * self.done // self.total if self.total else 10
        if tenths > self.tenths_shown and tenths < 10:
            self.tenths_shown = tenths
            self._line()

    def set_postfix(self, **figures) -> None:
        pass  # a log gets its figures from the caller's own lines (train's epoch records)

    def close(self) -> None:
        self._line()

    def _line(self) -> None:
        percent = 100 * self.done // self.total if self.total else 100
        print(f"{self.desc}: {percent}% ({self.done:,} of {self.total:,} {self.unit}), "
              f"{time.perf_counter() - self.started:.1f} s", file=self.stream, flush=True)
