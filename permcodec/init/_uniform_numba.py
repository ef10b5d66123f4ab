"""numba kernels of the uniform family (permcodec.init.distributions), on the CPU.

Element i takes words 2h, 2h+1 (h = i & 1) of substream-0 block i >> 1, and
k = (a >> 5) * 2^26 + (b >> 6) (specs/rng.md §6, ``distributions.uniform53``).
``uniform_values`` goes on to the canonical float32 in the same pass:
((k * 2^-53) * (high - low)) + low in float64, one rounding, then + 0.0. numba
compiles without fast-math, so LLVM neither fuses the multiply and add into an
FMA nor reorders them; tests/test_kernels.py compares 10^7 values per case with
the array path bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..backend import prepare_numba_cache, stamp_kernels
from ..parallel import run_over
from ._philox_numba import CHUNK, word_chunks
from .exactmath import TWO_POW_MINUS_53
from .philox import MASK32, SUBSTREAM_VALUES

prepare_numba_cache()  # before any kernel here is defined (see backend.forget_stale_kernels)


_U5 = np.uint64(5)
_U6 = np.uint64(6)
_U26 = np.uint64(26)


@njit(cache=True, nogil=True, inline="always")
def k53(high_word, low_word):
    return np.int64(((high_word >> _U5) << _U26) | (low_word >> _U6))


@njit(cache=True, nogil=True, inline="always")
def canonical(x):
    """One rounding of a float64 to float32, then + 0.0 (so -0.0 becomes +0.0)."""
    return np.float32(x) + np.float32(0.0)


@njit(cache=True, nogil=True, inline="always")
def _scaled(k, low, scale):
    return canonical(np.float64(k) * TWO_POW_MINUS_53 * scale + low)


@njit(cache=True, nogil=True, inline="always")
def _value(words, half, t, low, scale):
    """The value of element ``half`` (0 or 1) of the chunk's block t: words 2 half and 2 half + 1."""
    return _scaled(k53(np.uint64(words[2 * half, t]), np.uint64(words[2 * half + 1, t])), low, scale)


@njit(cache=True, nogil=True)
def _scaled_pairs(words, count, dest, low, scale):
    """dest[2t], dest[2t+1] = the values of the chunk's block t, for t < count. The indices are unsigned, so numba
    tests none for wraparound, and LLVM vectorizes the loop (ResNet-50's draw: 1.6 -> 0.8 ms)."""
    two, one = np.uint64(2), np.uint64(1)
    for t in range(count):
        u = np.uint64(t)
        dest[two * u] = _value(words, 0, u, low, scale)
        dest[two * u + one] = _value(words, 1, u, low, scale)


@njit(cache=True, nogil=True)
def _uniform_values(k0, k1, stream, start, low, scale, out, lo, hi):
    first = start >> 1
    words = np.empty((4, CHUNK), np.uint32)
    for chunk, count in word_chunks(k0, k1, stream, SUBSTREAM_VALUES, first, lo, hi, words):
        even = 2 * (first + chunk) - start
        if even >= 0 and even + 2 * count <= out.shape[0]:  # the whole chunk lands in out
            _scaled_pairs(words, count, out[even:even + 2 * count], low, scale)
            continue
        for t in range(count):
            even = 2 * (first + chunk + t) - start
            if even >= 0:
                out[even] = _value(words, 0, t, low, scale)
            if even + 1 < out.shape[0]:
                out[even + 1] = _value(words, 1, t, low, scale)


def uniform_values(seed: int, stream: int, start: int, count: int, low: float, high: float) -> np.ndarray:
    """The canonical float32 values of elements ``start .. start+count-1`` drawn from U(low, high)."""
    out = np.empty(count, dtype=np.float32)
    if count:
        blocks = ((start + count - 1) >> 1) - (start >> 1) + 1
        scale = float(high) - float(low)  # in float64, as the array path computes it
        run_over(_uniform_values, blocks, seed & MASK32, seed >> 32, stream, start, float(low), scale, out,
                 work=count)
    return out


stamp_kernels(globals())  # after the last kernel (see backend.stamp_kernels)
