"""numba kernel of Philox4x32-10 (permcodec.init.rng): integer-only, so compiled words equal the torch ones.

The kernels are serial and release the GIL; ``parallel.run_over`` splits
their block ranges across threads (see there for why not numba's prange).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..backend import prepare_numba_cache, stamp_kernels
from ..parallel import run_over
from .philox import MASK32, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, ROUNDS

prepare_numba_cache()  # before any kernel here is defined (see backend.forget_stale_kernels)

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_MASK = np.uint64(MASK32)
_U32 = np.uint64(32)
CHUNK = 1024  # blocks per call of fill_words: its four word rows stay in L1


@njit(cache=True, nogil=True)
def fill_words(k0, k1, stream, substream, first, count, words):
    """words[w, i] = output word w of block ``first + i``, for i < count (``words``: uint32 [4, >= count]).

    Every value is held as uint32 and each product as the uint64 of two
    uint32s, and the loop has no branch: LLVM then vectorizes it (AVX2: about
    7x the scalar loop). The results are the same integers either way.
    """
    key0 = np.uint32(k0)
    key1 = np.uint32(k1)
    for i in range(count):
        index = np.uint64(first + i)
        c0 = np.uint32(index & _MASK)
        c1 = np.uint32(index >> _U32)
        c2 = np.uint32(stream)
        c3 = np.uint32(substream)
        a = key0
        b = key1
        for _ in range(ROUNDS):
            p0 = np.uint64(c0) * _M0
            p1 = np.uint64(c2) * _M1
            c0, c1, c2, c3 = (np.uint32(np.uint32(p1 >> _U32) ^ c1 ^ a), np.uint32(p1 & _MASK),
                              np.uint32(np.uint32(p0 >> _U32) ^ c3 ^ b), np.uint32(p0 & _MASK))
            a = np.uint32((np.uint64(a) + _W0) & _MASK)
            b = np.uint32((np.uint64(b) + _W1) & _MASK)
        words[0, i] = c0
        words[1, i] = c1
        words[2, i] = c2
        words[3, i] = c3


# Not cached: numba loads a cached generator without registering its lowering, so a kernel compiled later in
# the process (a new argument type, or an edited kernel file) that iterates it fails with a KeyError. Uncached,
# it is compiled with whichever kernel needs it; kernels loaded from the cache do not need it.
@njit(cache=False, nogil=True)
def word_chunks(k0, k1, stream, substream, first, lo, hi, words):
    """Blocks ``first + lo .. first + hi - 1`` a chunk at a time: fills ``words`` (uint32 [4, CHUNK]) with a
    chunk's words and yields (the chunk's first block - first, its block count)."""
    for chunk in range(lo, hi, CHUNK):
        count = min(CHUNK, hi - chunk)
        fill_words(k0, k1, stream, substream, first + chunk, count, words)
        yield chunk, count


@njit(cache=True, nogil=True)
def _blocks(k0, k1, stream, substream, start, out, lo, hi):
    words = np.empty((4, CHUNK), np.uint32)
    for chunk, count in word_chunks(k0, k1, stream, substream, start, lo, hi, words):
        for i in range(count):
            for w in range(4):
                out[chunk + i, w] = np.int64(words[w, i])


def philox_blocks(seed: int, stream: int, substream: int, start: int, count: int) -> np.ndarray:
    """Output words of blocks ``start .. start+count-1``: int64 [count, 4] of 32-bit values."""
    out = np.empty((count, 4), dtype=np.int64)
    run_over(_blocks, count, seed & MASK32, seed >> 32, stream, substream, start, out)
    return out


stamp_kernels(globals())  # after the last kernel (see backend.stamp_kernels)
