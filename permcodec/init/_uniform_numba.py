"""numba kernel of the uniform family's 53-bit integers (permcodec.init.distributions), on the CPU.

Element i takes words 2h, 2h+1 (h = i & 1) of substream-0 block i >> 1, and
k = (a >> 5) * 2^26 + (b >> 6) (specs/rng.md §6). Equal, element for element,
to ``distributions.uniform53`` over ``rng.philox_blocks``; only faster.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..parallel import run_over
from ._philox_numba import philox
from .philox import MASK32, SUBSTREAM_VALUES

_U5 = np.uint64(5)
_U6 = np.uint64(6)
_U26 = np.uint64(26)


@njit(cache=True, nogil=True, inline="always")
def _k53(high_word, low_word):
    return np.int64(((high_word >> _U5) << _U26) | (low_word >> _U6))


@njit(cache=True, nogil=True)
def _uniform_block(i, first, start, k0, k1, stream, out):
    c0, c1, c2, c3 = philox(first + i, stream, SUBSTREAM_VALUES, k0, k1)
    even = 2 * (first + i) - start
    if even >= 0:
        out[even] = _k53(c0, c1)
    if even + 1 < out.shape[0]:
        out[even + 1] = _k53(c2, c3)


@njit(cache=True, nogil=True)
def _uniform53(k0, k1, stream, start, out, lo, hi):
    first = start >> 1
    for i in range(lo, hi):
        _uniform_block(i, first, start, k0, k1, stream, out)


def uniform53(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """The 53-bit integers k of elements ``start .. start+count-1``: int64 [count]."""
    out = np.empty(count, dtype=np.int64)
    if count:
        blocks = ((start + count - 1) >> 1) - (start >> 1) + 1
        run_over(_uniform53, blocks, seed & MASK32, seed >> 32, stream, start, out, work=count)
    return out
