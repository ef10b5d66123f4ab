"""numba kernel of Philox4x32-10 (permcodec.rng): integer-only, so compiled words equal the torch ones."""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

# numba's OpenMP layer and torch's own OpenMP runtime spin against each other
# on few cores (decode ran 6x slower); the workqueue layer does not.
numba.config.THREADING_LAYER = "workqueue"

from .rng import MASK32, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, ROUNDS

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_MASK = np.uint64(MASK32)
_U32 = np.uint64(32)


@njit(cache=True, parallel=True)
def _blocks(k0, k1, stream, substream, start, out):
    count = out.shape[0]
    for i in prange(count):
        index = np.uint64(start + i)
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
        out[i, 0] = np.int64(c0)
        out[i, 1] = np.int64(c1)
        out[i, 2] = np.int64(c2)
        out[i, 3] = np.int64(c3)


def philox_blocks(seed: int, stream: int, substream: int, start: int, count: int) -> np.ndarray:
    """Output words of blocks ``start .. start+count-1``: int64 [count, 4] of 32-bit values."""
    out = np.empty((count, 4), dtype=np.int64)
    if count:
        _blocks(seed & MASK32, seed >> 32, stream, substream, start, out)
    return out
