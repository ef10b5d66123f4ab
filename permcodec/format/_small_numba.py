"""numba kernel for many small tensors of the uniform family at once (``permcodec.small_tensors``).

For a tensor of a few thousand weights the Python around its kernel calls
(draw the pool, decode the section) costs more than the calls themselves, and
it holds the GIL. Here one call draws and decodes tensor after tensor, with the
very functions the one-tensor path calls (``_uniform_values``; for ``exact``
``_decode_swap_streams``; for ``delta`` ``_sort_keys`` and ``_place_rows``, the
keys sorted by ``sort_key_rows``), so every weight gets the same bits.

A small tensor's ``exact`` section often has one rANS lane, whose chain of
dependent steps decodes at half the speed of four lanes side by side (ResNet-50's
16 x 144 and 32 x 288 convolutions: 24-39 against 10.6 ns a weight), so the
lanes of different tensors with rows of the same length are decoded side by side.

numba caches these kernels with the functions they call compiled in, and checks
only this file's source; ``backend.forget_stale_kernels`` makes it recompile
them when a file they import changes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..backend import prepare_numba_cache, stamp_kernels
from ..init._uniform_numba import _uniform_values
from ._delta_numba import _place_rows, _sort_keys, sort_key_rows
from ._rans_numba import COUNT, _decode_swap_streams, _digit_tables, tensor_streams

prepare_numba_cache()  # before any kernel here is defined (see backend.forget_stale_kernels)

# The columns of ``decode_uniform``'s table, one row per tensor. A ``delta`` tensor's byte planes (SIZE bytes a
# code) start at byte FIRST of ``planes``; an ``exact`` tensor's SIZE lanes are rows FIRST .. FIRST + SIZE - 1 of
# the stream table (``_rans_numba.START`` ...).
SEED_LOW, SEED_HIGH, STREAM, ROWS, ROW_LENGTH, SCHEME, SIZE, FIRST, FIRST_VALUE = range(9)
EXACT, DELTA = 0, 1
# The columns of ``decode_uniform``'s groups, one row per set of streams decoded side by side: WIDTH streams,
# ``order[AT:AT + WIDTH]``, rows of ROW_LENGTH (the tensor table's column of that name).
AT, WIDTH = 0, 1


@njit(cache=True, nogil=True)
def side_by_side(row_lengths, rows, width):
    """(order, groups) of streams with rows of ``row_lengths`` coding ``rows`` rows each: ``order`` ranks them by
    row length, then by rows, most first (ties as given), and ``groups`` holds each run of up to ``width`` of
    them with rows of one length, as (where it starts in ``order``, its width). The kernel decodes a group's
    lanes side by side, which needs rows of one length, each lane stopping where its rows end (so the most
    first). Row lengths and row counts are below 2^31, as a batch's are (below 2^18)."""
    order = np.argsort(row_lengths * (1 << 31) + ((1 << 31) - 1 - rows), kind="mergesort")
    groups = np.empty((order.shape[0], 2), np.int64)
    count = 0
    for at in range(order.shape[0]):
        if at == 0 or groups[count - 1, WIDTH] == width or row_lengths[order[at]] != row_lengths[order[at - 1]]:
            groups[count, AT], groups[count, WIDTH] = at, 0
            count += 1
        groups[count - 1, WIDTH] += 1
    return order, groups[:count]


@njit(cache=True, nogil=True)
def plan_streams(lane_lengths, table, width):
    """(streams, stream_tensor, order, groups) for ``decode_uniform``: the stream table of the ``exact`` tensors
    of ``table`` (their lanes' word counts in ``lane_lengths``, in the order their FIRST columns give), each
    stream's tensor, and the streams ``side_by_side``."""
    exact = np.flatnonzero(table[:, SCHEME] == EXACT)
    exact = exact[np.argsort(table[exact, FIRST])]  # their lanes' order in lane_lengths and in the words
    streams, tensor_of = tensor_streams(lane_lengths, table[exact, SIZE], table[exact, ROWS], table[exact, ROW_LENGTH],
                                        table[exact, FIRST_VALUE])
    stream_tensor = exact[tensor_of]
    order, groups = side_by_side(table[stream_tensor, ROW_LENGTH], streams[:, COUNT], width)
    return streams, stream_tensor, order, groups


@njit(cache=True, nogil=True)
def _draw(table, bounds, out, i):
    """Tensor i's rows x row_length values, drawn from U(bounds[i, 0], bounds[i, 0] + bounds[i, 1]) into ``out``
    from its FIRST_VALUE on."""
    count = table[i, ROWS] * table[i, ROW_LENGTH]
    values = out[table[i, FIRST_VALUE]:table[i, FIRST_VALUE] + count]
    _uniform_values(table[i, SEED_LOW], table[i, SEED_HIGH], table[i, STREAM], 0, bounds[i, 0], bounds[i, 1],
                    values, 0, ((count - 1) >> 1) + 1)
    return values.reshape((table[i, ROWS], table[i, ROW_LENGTH]))


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
def decode_uniform(table, bounds, words, streams, stream_tensor, order, groups, planes, out, status, passed,
                   lo, hi, group_lo, group_hi):
    """Tensors ``lo .. hi-1`` of ``table`` (int64 [T, 9], the columns above), each drawn into ``out`` and put in
    the order its section codes: the ``delta`` ones one by one, the ``exact`` ones by stream groups
    ``group_lo .. group_hi-1``, which hold every lane of those tensors (``stream_tensor``: each stream's tensor).
    A tensor is drawn just before its first group, while its values are still in cache. status[s] is stream s's
    (``_decode_swap_streams``); passed[i] is whether tensor i's decoding found nothing wrong."""
    drawn = np.zeros(hi - lo, np.bool_)
    for i in range(lo, hi):
        if table[i, SCHEME] == DELTA:
            first, size = table[i, FIRST], table[i, SIZE]
            rows_of_values = _draw(table, bounds, out, i)
            passed[i] = _decode_delta(planes[first:first + rows_of_values.size * size], size, rows_of_values)
            drawn[i - lo] = True
    n = -1
    whole, extra, inverse = _digit_tables(1)
    for g in range(group_lo, group_hi):
        ids = order[groups[g, AT]:groups[g, AT] + groups[g, WIDTH]]
        for s in ids:
            if not drawn[stream_tensor[s] - lo]:
                _draw(table, bounds, out, stream_tensor[s])
                drawn[stream_tensor[s] - lo] = True
        if table[stream_tensor[ids[0]], ROW_LENGTH] != n:
            n = table[stream_tensor[ids[0]], ROW_LENGTH]
            whole, extra, inverse = _digit_tables(n)
        _decode_swap_streams(words, streams, ids, n, out, status, whole, extra, inverse)
    for i in range(lo, hi):
        if table[i, SCHEME] == EXACT:
            passed[i] = not status[table[i, FIRST]:table[i, FIRST] + table[i, SIZE]].any()


stamp_kernels(globals())  # after the last kernel (see backend.stamp_kernels)
