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


@njit(cache=True, nogil=True, inline="always")
def philox(block, stream, substream, k0, k1):
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
        c0, c1, c2, c3 = philox(start + i, stream, substream, k0, k1)
        out[i, 0] = np.int64(c0)
        out[i, 1] = np.int64(c1)
        out[i, 2] = np.int64(c2)
        out[i, 3] = np.int64(c3)


def philox_blocks(seed: int, stream: int, substream: int, start: int, count: int) -> np.ndarray:
    """Output words of blocks ``start .. start+count-1``: int64 [count, 4] of 32-bit values."""
    out = np.empty((count, 4), dtype=np.int64)
    run_over(_blocks, count, seed & MASK32, seed >> 32, stream, substream, start, out)
    return out
