"""numba kernel for many small ``exact`` tensors of the uniform family at once (``permcodec.small_tensors``).

For a tensor of a few thousand weights the Python around its two kernel calls
(draw the pool, decode the swaps) costs more than the calls themselves, and it
holds the GIL. Here one call draws and decodes tensor after tensor, with the
very functions the one-tensor path calls (``_uniform_values``,
``_decode_swap_groups``), so every weight gets the same bits.
"""

from __future__ import annotations

from numba import njit

from ..init._uniform_numba import _uniform_values
from ._rans_numba import _GROUP, _decode_swap_groups, _digit_tables

# The columns of ``decode_uniform_exact``'s table, one row per tensor.
SEED_LOW, SEED_HIGH, STREAM, ROWS, ROW_LENGTH, LANES, FIRST_VALUE, FIRST_LANE = range(8)


@njit(cache=True, nogil=True)
def decode_uniform_exact(table, bounds, words, lane_starts, lane_ends, out, status, lo, hi):
    """Tensors ``lo .. hi-1`` of ``table`` (int64 [T, 8], the columns above): tensor i gets its rows x row_length
    values drawn from U(bounds[i, 0], bounds[i, 0] + bounds[i, 1]) into ``out`` from its FIRST_VALUE on, then put
    in the order its ``exact`` lanes code: lanes FIRST_LANE .. FIRST_LANE + LANES - 1 of ``lane_starts`` /
    ``lane_ends`` (word offsets into ``words``), each lane's status set in ``status`` as the one-tensor kernel
    sets it."""
    for i in range(lo, hi):
        rows, n, lanes = table[i, ROWS], table[i, ROW_LENGTH], table[i, LANES]
        first, lane = table[i, FIRST_VALUE], table[i, FIRST_LANE]
        values = out[first:first + rows * n]
        _uniform_values(table[i, SEED_LOW], table[i, SEED_HIGH], table[i, STREAM], 0, bounds[i, 0], bounds[i, 1],
                        values, 0, ((rows * n - 1) >> 1) + 1)
        whole, extra, inverse = _digit_tables(n)
        _decode_swap_groups(words, lane_starts[lane:lane + lanes], lane_ends[lane:lane + lanes], lanes,
                            values.reshape((rows, n)), status[lane:lane + lanes], whole, extra, inverse,
                            0, (lanes + _GROUP - 1) // _GROUP)
