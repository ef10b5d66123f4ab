"""numba kernel of Philox4x32-10 (permcodec.init.rng): integer-only, so compiled words equal the torch ones.

The kernels are serial and release the GIL; ``parallel.run_over`` splits
their block ranges across threads (see there for why not numba's prange).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..parallel import run_over
from .philox import MASK32, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, ROUNDS

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_MASK = np.uint64(MASK32)
_U32 = np.uint64(32)
_U5 = np.uint64(5)
_U6 = np.uint64(6)
_U26 = np.uint64(26)


@njit(cache=True, nogil=True, inline="always")
def _philox(block, stream, substream, k0, k1):
    index = np.uint64(block)
    c0 = index & _MASK
    c1 = index >> _U32
    c2 = np.uint64(stream)
    c3 = np.uint64(substream)
    a = np.uint64(k0)
    b = np.uint64(k1)
    for _ in range(ROUNDS):
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = (p1 >> _U32) ^ c1 ^ a, p1 & _MASK, (p0 >> _U32) ^ c3 ^ b, p0 & _MASK
        a = (a + _W0) & _MASK
        b = (b + _W1) & _MASK
    return c0, c1, c2, c3


@njit(cache=True, nogil=True)
def _blocks(k0, k1, stream, substream, start, out, lo, hi):
    for i in range(lo, hi):
        c0, c1, c2, c3 = _philox(start + i, stream, substream, k0, k1)
        out[i, 0] = np.int64(c0)
        out[i, 1] = np.int64(c1)
        out[i, 2] = np.int64(c2)
        out[i, 3] = np.int64(c3)


def philox_blocks(seed: int, stream: int, substream: int, start: int, count: int) -> np.ndarray:
    """Output words of blocks ``start .. start+count-1``: int64 [count, 4] of 32-bit values."""
    out = np.empty((count, 4), dtype=np.int64)
    run_over(_blocks, count, seed & MASK32, seed >> 32, stream, substream, start, out)
    return out


@njit(cache=True, nogil=True)
def _uniform_block(i, first, start, k0, k1, stream, out):
    c0, c1, c2, c3 = _philox(first + i, stream, 0, k0, k1)
    even = 2 * (first + i) - start
    if even >= 0:
        out[even] = np.int64(((c0 >> _U5) << _U26) | (c1 >> _U6))
    if even + 1 < out.shape[0]:
        out[even + 1] = np.int64(((c2 >> _U5) << _U26) | (c3 >> _U6))


@njit(cache=True, nogil=True)
def _uniform53(k0, k1, stream, start, out, lo, hi):
    first = start >> 1
    for i in range(lo, hi):
        _uniform_block(i, first, start, k0, k1, stream, out)


def uniform53(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """The 53-bit integers k of elements ``start .. start+count-1`` (specs/rng.md: words 2h, 2h+1 of
    block i >> 1, k = (a >> 5) * 2^26 + (b >> 6)): int64 [count]."""
    out = np.empty(count, dtype=np.int64)
    if count:
        blocks = ((start + count - 1) >> 1) - (start >> 1) + 1
        run_over(_uniform53, blocks, seed & MASK32, seed >> 32, stream, start, out, work=count)
    return out
