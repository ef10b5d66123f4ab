"""numba kernel of scheme ``delta``'s decoding on the CPU: byte planes, zigzag, ranks and placement in one pass.

``place_rows`` gives what ``delta.decode_delta``'s array path gives, from
the same stable order of each initial row: out[r, j] = initial[r, order[r, b]]
with b = rank[r, j] + delta[r, j], and the same checks of b. Only integer
work and copies happen here, so the values are the initial bits themselves.

The order comes from sorting ``sort_keys``: each value's order-preserving 32
bits above its position, so that numpy's fast unstable sort of distinct keys
gives the stable order, and the position is read back from the low bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..backend import prepare_numba_cache, stamp_kernels
from ..parallel import run_over

prepare_numba_cache()  # before any kernel here is defined (see backend.forget_stale_kernels)

IN_PLACE = 0
NOT_A_PERMUTATION = 1
OUT_OF_RANGE = 2  # outranks NOT_A_PERMUTATION: the array path reports it for the whole tensor first


_LOW32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)
_NAN_BITS_ABOVE = 0x7F800000  # |bits| above this: a NaN


@njit(cache=True, nogil=True)
def _sort_keys(bits, keys, nan, lo, hi):
    """keys[r, j] = order-preserving(bits[r, j]) << 32 | j for rows lo .. hi-1 (float32 bits as int32; -0.0
    taken as +0.0, which compares equal to it); nan[r] = 1 for a row holding a NaN, whose keys misplace it.
    The compiled form of ``arrays._argsort_by_keys``'s keys, in one pass instead of numpy's nine."""
    n = bits.shape[1]
    for r in range(lo, hi):
        for j in range(n):
            b = bits[r, j]
            if b == -2 ** 31:  # -0.0
                b = 0
            if (b & 0x7FFFFFFF) > _NAN_BITS_ABOVE:
                nan[r] = 1
            ordered = np.uint32(b ^ ((b >> 31) | np.int32(-2 ** 31)))
            keys[r, j] = (np.uint64(ordered) << _U32) | np.uint64(j)


@njit(cache=True, nogil=True)
def _radix_sort_row(row, scratch, counts):
    """``row`` sorted ascending in place by a stable LSD radix sort on the four value bytes (bits 32-63)."""
    n = row.shape[0]
    source, target = row, scratch
    for shift in (32, 40, 48, 56):  # an even number of passes: the row ends back in row
        counts[:256] = 0
        for j in range(n):
            counts[(source[j] >> np.uint64(shift)) & np.uint64(0xFF)] += 1
        total = 0
        for digit in range(256):
            total, counts[digit] = total + counts[digit], total
        for j in range(n):
            digit = (source[j] >> np.uint64(shift)) & np.uint64(0xFF)
            target[counts[digit]] = source[j]
            counts[digit] += 1
        source, target = target, source


_SIGN, _ALL_ONES = np.uint32(0x80000000), np.uint32(0xFFFFFFFF)
# The longest row ``_bucket_sort_row`` takes: past it, its four arrays of a row leave the core's fast caches and
# it sorts no faster than the radix sort (``python tools/bench_delta_sort.py``: he_uniform rows, 5.2-5.9 against
# 6.1-8.6 ns a key from 144 to 4,096 keys; a review helper's script found it slower from 16,384 on).
BUCKET_SORT_MAX = 1 << 12


@njit(cache=True, nogil=True)
def _float_bits(ordered):
    """The float32 bits of an order-preserving value of ``_sort_keys``."""
    return ordered ^ (_SIGN if ordered >= _SIGN else _ALL_ONES)


@njit(cache=True, nogil=True)
def _bucket_sort_row(row, scratch, counts, bits, buckets):
    """The moves an insertion sort made to sort ``row`` in place after its keys were spread over n buckets
    evenly spaced between its least and greatest value, or -1 with the row untouched. A key's bucket is
    non-decreasing in its value, so the insertion sort moves keys only within a bucket: 5.2-5.9 ns a key for a
    batch's he_uniform pools, against 6.1-8.6 for the radix sort (``tools/bench_delta_sort.py``). The insertion sort runs over the whole row, so the
    order is right whatever the buckets. -1 where the row is longer than BUCKET_SORT_MAX, where its values do
    not span a finite, nonzero range (all equal, an infinity or a NaN bit pattern at either end), or where
    its bucket counts foresee more than 2 n moves (many ties, values far from uniform)."""
    n = row.shape[0]
    if n == 0 or n > BUCKET_SORT_MAX:
        return -1
    values = bits.view(np.float32)
    least, most = _ALL_ONES, np.uint32(0)
    for j in range(n):
        ordered = np.uint32(row[j] >> _U32)
        least, most = min(least, ordered), max(most, ordered)  # on the integers, which vectorizes
        bits[j] = _float_bits(ordered)
    bits[n], bits[n + 1] = _float_bits(least), _float_bits(most)
    low = np.float64(values[n])
    spread = np.float64(values[n + 1]) - low
    if not (0.0 < spread < np.inf):
        return -1
    scale = n / spread
    for j in range(n):
        buckets[j] = min(np.int64((np.float64(values[j]) - low) * scale), n - 1)
    counts[:n] = 0
    for j in range(n):
        counts[buckets[j]] += 1
    foreseen, start = 0, 0
    for bucket in range(n):
        foreseen += counts[bucket] * (counts[bucket] - 1) // 2
        start, counts[bucket] = start + counts[bucket], start
    if foreseen > 2 * n:
        return -1
    for j in range(n):
        scratch[counts[buckets[j]]] = row[j]
        counts[buckets[j]] += 1
    moves = 0
    for j in range(1, n):
        key, at = scratch[j], j
        while at > 0 and scratch[at - 1] > key:
            scratch[at] = scratch[at - 1]
            at -= 1
        scratch[at] = key
        moves += j - at
    row[:] = scratch[:n]
    return moves


@njit(cache=True, nogil=True)
def sort_key_rows(keys):
    """Each row of ``_sort_keys``'s keys (in position order) sorted ascending, as numpy sorts them, so that equal
    values stay in position order: keys are distinct, so there is one sorted order. By buckets where they
    serve (``_bucket_sort_row``), else by a stable radix sort; either needs no Python between tensors
    (``_small_numba``)."""
    rows, n = keys.shape
    scratch = np.empty(n, np.uint64)
    bucketed = n if n <= BUCKET_SORT_MAX else 0  # the rows ``_bucket_sort_row`` takes
    counts = np.empty(max(bucketed, 256), np.int64)  # a bucket's count, or a radix digit's
    bits = np.empty(bucketed + 2, np.uint32)
    buckets = np.empty(bucketed, np.int64)
    for r in range(rows):
        if _bucket_sort_row(keys[r], scratch, counts, bits, buckets) < 0:
            _radix_sort_row(keys[r], scratch, counts)


def sort_keys(initial: np.ndarray):
    """(keys, has_nan): ``_sort_keys`` of float32 rows [rows, n] with n < 2^32."""
    rows, n = initial.shape
    keys = np.empty((rows, n), np.uint64)
    nan = np.zeros(rows, np.int64)
    run_over(_sort_keys, rows, np.ascontiguousarray(initial).view(np.int32), keys, nan, work=rows * n)
    return keys, bool(nan.any())


@njit(cache=True, nogil=True)
def _row_codes(planes, width, count, first, codes):
    """codes[j] = the zigzag code of element first + j: byte p of it is planes[p * count + first + j]. Plane by
    plane over the row, so that each pass reads one run of bytes (and LLVM vectorizes it)."""
    n = codes.shape[0]
    for j in range(n):
        codes[j] = np.uint64(planes[first + j])
    for plane in range(1, width):
        shift, start = np.uint64(8 * plane), plane * count + first
        for j in range(n):
            codes[j] |= np.uint64(planes[start + j]) << shift


@njit(cache=True, nogil=True)
def _place_rows(planes, width, initial, sorted_keys, out, status, lo, hi):
    # Kept whole (27 lines): the per-row ranks, the rank check and the placement share one pass over the row.
    rows, n = initial.shape
    rank = np.empty(n, np.int64)
    order = np.empty(n, np.int64)
    codes = np.empty(n, np.uint64)
    taken_in = np.zeros(n, np.int64)  # taken_in[b] == r + 1: rank b is taken in row r (no clearing per row)
    for r in range(lo, hi):
        for t in range(n):
            order[t] = np.int64(sorted_keys[r, t] & _LOW32)
        for t in range(n):
            rank[order[t]] = t
        _row_codes(planes, width, rows * n, r * n, codes)
        worst = IN_PLACE
        for j in range(n):
            code = codes[j]
            delta = np.int64(code >> np.uint64(1)) ^ -np.int64(code & np.uint64(1))
            if delta < -rank[j] or delta >= n - rank[j]:  # b outside [0, n), compared without overflow
                worst = OUT_OF_RANGE
                continue
            b = rank[j] + delta
            if taken_in[b] == r + 1:
                worst = max(worst, NOT_A_PERMUTATION)
                continue
            taken_in[b] = r + 1
            out[r, j] = initial[r, order[b]]
        status[r] = worst


def place_rows(planes: np.ndarray, width: int, initial: np.ndarray, sorted_keys: np.ndarray):
    """(out, status): the decoded rows [rows, n] and per row IN_PLACE, NOT_A_PERMUTATION or OUT_OF_RANGE.

    ``planes`` is the section's payload (uint8, ``width`` planes of rows * n
    bytes); the low 32 bits of ``sorted_keys[r]`` (uint64) are row r's stable order.
    """
    rows, n = initial.shape
    out = np.empty((rows, n), initial.dtype)
    status = np.zeros(rows, np.int64)
    run_over(_place_rows, rows, planes, width, np.ascontiguousarray(initial), np.ascontiguousarray(sorted_keys),
             out, status, work=rows * n)
    return out, status


stamp_kernels(globals())  # after the last kernel (see backend.stamp_kernels)
