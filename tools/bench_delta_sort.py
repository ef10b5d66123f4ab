"""Speed of the batch kernel's sort of ``delta`` keys, next to numpy's sort of the same keys in the same run.

    python tools/bench_delta_sort.py
    python tools/bench_delta_sort.py --lengths 576 4096 32768 --repeat 9

Each row length gets he_uniform rows (a batch's pools) of about 2^16 keys in all, keyed as the kernel keys
them (``_delta_numba.sort_keys``). ``sort_key_rows`` is what the kernel runs (buckets where they serve,
else the radix sort); "radix" is the radix sort alone, as before the buckets; numpy's sort is the baseline.
ns per key, best of --repeat timings of 20 sorts each, the copy of the keys into place taken off.
"""

from __future__ import annotations

import argparse

import numpy as np
from benchutil import best_seconds
from numba import njit

from permcodec.format import _delta_numba
from permcodec import arrays
from permcodec.init import distributions as D

SORTS_PER_TIMING = 20


@njit(cache=False, nogil=True)
def radix_sort_rows(keys):
    """Every row by ``_delta_numba._radix_sort_row`` alone."""
    rows, n = keys.shape
    scratch, counts = np.empty(n, np.uint64), np.empty(256, np.int64)
    for r in range(rows):
        _delta_numba._radix_sort_row(keys[r], scratch, counts)


def pool_keys(n: int) -> np.ndarray:
    """Sort keys of he_uniform rows of n, about 2^16 of them in all."""
    rows = max(1, (1 << 16) // n)
    params = D.make_params("he_uniform", (rows, n))
    values = D.sample("he_uniform", params, 7, 1, 0, rows * n, arrays.NUMPY).reshape(rows, n)
    keys, has_nan = _delta_numba.sort_keys(values)
    assert not has_nan
    return keys


def ns_per_key(sort, keys: np.ndarray, repeat: int) -> float:
    """``sort(work)`` of a fresh copy of ``keys``, its copy's time taken off; checked against numpy's sort."""
    work = keys.copy()

    def sorts(with_sort: bool):
        for _ in range(SORTS_PER_TIMING):
            work[:] = keys
            if with_sort:
                sort(work)

    seconds = best_seconds(lambda: sorts(True), repeat) - best_seconds(lambda: sorts(False), repeat)
    work[:] = keys
    sort(work)
    assert np.array_equal(work, np.sort(keys, axis=1))
    return 1e9 * seconds / (SORTS_PER_TIMING * keys.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[144, 576, 1600, 4096, 8192, 32768],
                        help="row lengths (default: 144 576 1600 4096 8192 32768)")
    parser.add_argument("--repeat", type=int, default=7, help="timings per figure, the best kept (default 7)")
    args = parser.parse_args()
    print(f"ns per key; bucket sort up to {_delta_numba.BUCKET_SORT_MAX} keys a row, radix sort past it\n")
    print("| row length | sort_key_rows | radix alone | numpy sort | sort_key_rows x numpy | radix x numpy |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.lengths:
        keys = pool_keys(n)
        shipped = ns_per_key(_delta_numba.sort_key_rows, keys, args.repeat)
        radix = ns_per_key(radix_sort_rows, keys, args.repeat)
        numpy_sort = ns_per_key(lambda work: work.sort(axis=1), keys, args.repeat)
        print(f"| {n:,} | {shipped:.2f} | {radix:.2f} | {numpy_sort:.2f} | {shipped / numpy_sort:.2f} | "
              f"{radix / numpy_sort:.2f} |", flush=True)


if __name__ == "__main__":
    main()
