"""numba kernel of scheme ``delta``'s decoding on the CPU: byte planes, zigzag, ranks and placement in one pass.

``place_rows`` gives what ``delta.decode_delta``'s array path gives, from
the same stable order of each initial row: out[r, j] = initial[r, order[r, b]]
with b = rank[r, j] + delta[r, j], and the same checks of b. Only integer
work and copies happen here, so the values are the initial bits themselves.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..parallel import run_over

IN_PLACE = 0
NOT_A_PERMUTATION = 1
OUT_OF_RANGE = 2  # outranks NOT_A_PERMUTATION: the array path reports it for the whole tensor first


@njit(cache=True, nogil=True)
def _code(planes, width, count, index):
    """The zigzag code of element ``index``: byte p of it is planes[p * count + index]."""
    code = np.uint64(0)
    for plane in range(width):
        code |= np.uint64(planes[plane * count + index]) << np.uint64(8 * plane)
    return code


@njit(cache=True, nogil=True)
def _place_rows(planes, width, initial, order, out, status, lo, hi):
    # Kept whole (27 lines): the per-row ranks, the rank check and the placement share one pass over the row.
    rows, n = initial.shape
    count = rows * n
    rank = np.empty(n, np.int64)
    taken = np.zeros(n, np.bool_)
    for r in range(lo, hi):
        for t in range(n):
            rank[order[r, t]] = t
        worst = IN_PLACE
        for j in range(n):
            code = _code(planes, width, count, r * n + j)
            delta = np.int64(code >> np.uint64(1)) ^ -np.int64(code & np.uint64(1))
            if delta < -rank[j] or delta >= n - rank[j]:  # b outside [0, n), compared without overflow
                worst = OUT_OF_RANGE
                continue
            b = rank[j] + delta
            if taken[b]:
                worst = max(worst, NOT_A_PERMUTATION)
                continue
            taken[b] = True
            out[r, j] = initial[r, order[r, b]]
        status[r] = worst
        taken[:] = False


def place_rows(planes: np.ndarray, width: int, initial: np.ndarray, order: np.ndarray):
    """(out, status): the decoded rows [rows, n] and per row IN_PLACE, NOT_A_PERMUTATION or OUT_OF_RANGE.

    ``planes`` is the section's payload (uint8, ``width`` planes of rows * n
    bytes), ``order`` each initial row's stable argsort.
    """
    rows, n = initial.shape
    out = np.empty((rows, n), initial.dtype)
    status = np.zeros(rows, np.int64)
    run_over(_place_rows, rows, planes, width, np.ascontiguousarray(initial), np.ascontiguousarray(order), out,
             status, work=rows * n)
    return out, status
