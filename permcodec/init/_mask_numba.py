"""numba kernel of the keep-mask of sparse and shared pools (permcodec.init.distributions), on the CPU.

Element i is kept iff word i & 3 of substream-1 block i >> 2 is below the
record's threshold. ``zero_unkept`` sets the other elements of a drawn array
to +0.0 in place: what ``xp.where(keep_mask(...), values, 0)`` gives, in one
pass and without the [count] words and mask arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..backend import prepare_numba_cache, stamp_kernels
from ..parallel import run_over
from ._philox_numba import CHUNK, word_chunks
from .philox import MASK32, SUBSTREAM_MASK

prepare_numba_cache()  # before any kernel here is defined (see backend.forget_stale_kernels)


@njit(cache=True, nogil=True)
def _zero_unkept(k0, k1, stream, start, threshold, out_bits, lo, hi):
    """Zero the bits of each element of ``out_bits`` (float32 bits as int32) the mask drops: an AND with an
    all-ones or all-zeros word, not a branch (whether a random element is kept cannot be predicted; the branch
    cost 3x). Chunks reaching past either end of the draw take the checked loop."""
    first = start >> 2
    size = out_bits.shape[0]
    words = np.empty((4, CHUNK), np.uint32)
    for chunk, count in word_chunks(k0, k1, stream, SUBSTREAM_MASK, first, lo, hi, words):
        base = 4 * (first + chunk) - start
        if base >= 0 and base + 4 * count <= size:
            for t in range(count):
                for w in range(4):
                    out_bits[base + 4 * t + w] &= -np.int32(words[w, t] < threshold)
        else:
            for t in range(count):
                for w in range(4):
                    if 0 <= base + 4 * t + w < size and words[w, t] >= threshold:
                        out_bits[base + 4 * t + w] = 0


def zero_unkept(values: np.ndarray, seed: int, stream: int, start: int, threshold: int) -> np.ndarray:
    """``values`` (float32, elements ``start .. start+len-1``) with every element the mask drops set to +0.0."""
    count = values.shape[0]
    if count:
        blocks = ((start + count - 1) >> 2) - (start >> 2) + 1
        run_over(_zero_unkept, blocks, seed & MASK32, seed >> 32, stream, start, np.uint64(threshold),
                 values.view(np.int32), work=count)
    return values


stamp_kernels(globals())  # after the last kernel (see backend.stamp_kernels)
