"""numba kernel for many small tensors of the uniform family at once (``permcodec.small_tensors``).

For a tensor of a few thousand weights the Python around its kernel calls
(draw the pool, decode the section) costs more than the calls themselves, and
it holds the GIL. Here one call draws and decodes tensor after tensor, with the
very functions the one-tensor path calls (``_uniform_values``; for ``exact``
``_decode_swap_groups``; for ``delta`` ``_sort_keys`` and ``_place_rows``, the
keys sorted by ``sort_key_rows``), so every weight gets the same bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..init._uniform_numba import _uniform_values
from ._delta_numba import _place_rows, _sort_keys, sort_key_rows
from ._rans_numba import _GROUP, _decode_swap_groups, _digit_tables

# The columns of ``decode_uniform``'s table, one row per tensor. An ``exact`` tensor's words are lanes FIRST ..
# FIRST + SIZE - 1 of ``lane_starts`` / ``lane_ends``; a ``delta`` tensor's byte planes (SIZE bytes a code) start
# at byte FIRST of ``planes``.
SEED_LOW, SEED_HIGH, STREAM, ROWS, ROW_LENGTH, SCHEME, SIZE, FIRST, FIRST_VALUE = range(9)
EXACT, DELTA = 0, 1


@njit(cache=True, nogil=True)
def _decode_exact(words, lane_starts, lane_ends, first, lanes, rows_of_values):
    """Whether lanes first .. first+lanes-1 put ``rows_of_values`` in their coded order cleanly (in place)."""
    status = np.zeros(lanes, np.int64)
    whole, extra, inverse = _digit_tables(rows_of_values.shape[1])
    _decode_swap_groups(words, lane_starts[first:first + lanes], lane_ends[first:first + lanes], lanes,
                        rows_of_values, status, whole, extra, inverse, 0, (lanes + _GROUP - 1) // _GROUP)
    return not status.any()


@njit(cache=True, nogil=True)
def _decode_delta(planes, width, rows_of_values):
    """Whether the byte planes put ``rows_of_values`` in their coded order cleanly (in place). A row holding a
    NaN does not pass here: the one-tensor path orders it by numpy's stable argsort."""
    rows, n = rows_of_values.shape
    keys = np.empty((rows, n), np.uint64)
    nan = np.zeros(rows, np.int64)
    _sort_keys(rows_of_values.view(np.int32), keys, nan, 0, rows)
    if nan.any():
        return False
    sort_key_rows(keys)
    placed = np.empty((rows, n), np.float32)
    status = np.zeros(rows, np.int64)
    _place_rows(planes, width, rows_of_values, keys, placed, status, 0, rows)
    rows_of_values[:] = placed
    return not status.any()


@njit(cache=True, nogil=True)
def decode_uniform(table, bounds, words, lane_starts, lane_ends, planes, out, passed, lo, hi):
    """Tensors ``lo .. hi-1`` of ``table`` (int64 [T, 9], the columns above): tensor i gets its rows x row_length
    values drawn from U(bounds[i, 0], bounds[i, 0] + bounds[i, 1]) into ``out`` from its FIRST_VALUE on, then
    put in the order its section codes; passed[i] is whether that decoding found nothing wrong."""
    for i in range(lo, hi):
        rows, n, size, first = table[i, ROWS], table[i, ROW_LENGTH], table[i, SIZE], table[i, FIRST]
        values = out[table[i, FIRST_VALUE]:table[i, FIRST_VALUE] + rows * n]
        _uniform_values(table[i, SEED_LOW], table[i, SEED_HIGH], table[i, STREAM], 0, bounds[i, 0], bounds[i, 1],
                        values, 0, ((rows * n - 1) >> 1) + 1)
        if table[i, SCHEME] == EXACT:
            passed[i] = _decode_exact(words, lane_starts, lane_ends, first, size, values.reshape((rows, n)))
        else:
            passed[i] = _decode_delta(planes[first:first + rows * n * size], size, values.reshape((rows, n)))
