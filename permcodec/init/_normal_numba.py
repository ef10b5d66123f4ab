"""numba kernel of the normal family (permcodec.init.distributions), on the CPU: Philox words to canonical float32
in one pass.

Block i >> 1 gives one Box-Muller pair (specs/rng.md §6): u = (k53 + 1) * 2^-53, r = sqrt(-2 ln u), and the
angle from words 2 and 3; even elements take r cos, odd ones r sin, then z * std + mean, one rounding to
float32 and + 0.0. ln, sin and cos are ``exactmath``'s polynomials with its constants, one rounded operation at a
time. The only difference from the array path is how u is split into mantissa and exponent: ``math.frexp``
here, the bits of u there; both are exact, so they agree. numba compiles without fast-math (no FMA, no
reordering); tests/test_kernels.py compares 10^7 values per case with the torch path bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..backend import prepare_numba_cache, stamp_kernels
from ..parallel import run_over
from . import exactmath
from ._philox_numba import CHUNK, word_chunks
from ._uniform_numba import canonical, k53
from .philox import MASK32, SUBSTREAM_VALUES

prepare_numba_cache()  # before any kernel here is defined (see backend.forget_stale_kernels)

SIN_COEFFS = np.array(exactmath.SIN_COEFFS)
COS_COEFFS = np.array(exactmath.COS_COEFFS)
ATANH_COEFFS = np.array(exactmath.ATANH_COEFFS)
HALF_PI = exactmath.HALF_PI
SQRT2 = exactmath.SQRT2
LN2_HI = exactmath.LN2_HI
LN2_LO = exactmath.LN2_LO
TWO_POW_MINUS_52 = exactmath.TWO_POW_MINUS_52
TWO_POW_MINUS_53 = exactmath.TWO_POW_MINUS_53
_U10 = np.uint64(10)
_U22 = np.uint64(22)
_U30 = np.uint64(30)
_LOW30 = np.uint64(0x3FFFFFFF)


@njit(cache=True, nogil=True, inline="always")
def _horner(z, coeffs):
    acc = coeffs[coeffs.shape[0] - 1]
    for i in range(coeffs.shape[0] - 2, -1, -1):
        acc = acc * z
        acc = acc + coeffs[i]
    return acc


@njit(cache=True, nogil=True, inline="always")
def _log_positive(u):
    half_mantissa, exponent = math.frexp(u)  # u = half_mantissa * 2^exponent, half_mantissa in [0.5, 1): exact
    m = half_mantissa * 2.0
    e = exponent - 1
    if m > SQRT2:
        m = m * 0.5
        e = e + 1
    s = (m - 1.0) / (m + 1.0)
    ln_m = (s * 2.0) * _horner(s * s, ATANH_COEFFS)
    ef = np.float64(e)
    return ef * LN2_HI + (ef * LN2_LO + ln_m)


@njit(cache=True, nogil=True, inline="always")
def _pair(c0, c1, c2, c3):
    """(r cos, r sin) of one block's words."""
    u = np.float64(k53(c0, c1) + 1) * TWO_POW_MINUS_53
    radius = math.sqrt(_log_positive(u) * -2.0)
    quadrant = c2 >> _U30
    fraction = np.float64(((c2 & _LOW30) << _U22) | (c3 >> _U10)) * TWO_POW_MINUS_52
    x = fraction * HALF_PI
    z = x * x
    s = x * _horner(z, SIN_COEFFS)
    c = _horner(z, COS_COEFFS)
    if quadrant == 0:
        sin, cos = s, c
    elif quadrant == 1:
        sin, cos = c, -s
    elif quadrant == 2:
        sin, cos = -s, -c
    else:
        sin, cos = -c, s
    return radius * cos, radius * sin


@njit(cache=True, nogil=True)
def _normal_values(k0, k1, stream, start, mean, std, out, lo, hi):
    first = start >> 1
    words = np.empty((4, CHUNK), np.uint32)
    for chunk, count in word_chunks(k0, k1, stream, SUBSTREAM_VALUES, first, lo, hi, words):
        for t in range(count):
            z_cos, z_sin = _pair(np.uint64(words[0, t]), np.uint64(words[1, t]), np.uint64(words[2, t]),
                                 np.uint64(words[3, t]))
            even = 2 * (first + chunk + t) - start
            if even >= 0:
                out[even] = canonical(z_cos * std + mean)
            if even + 1 < out.shape[0]:
                out[even + 1] = canonical(z_sin * std + mean)


def normal_values(seed: int, stream: int, start: int, count: int, mean: float, std: float) -> np.ndarray:
    """The canonical float32 values of elements ``start .. start+count-1`` drawn from N(mean, std)."""
    out = np.empty(count, dtype=np.float32)
    if count:
        blocks = ((start + count - 1) >> 1) - (start >> 1) + 1
        run_over(_normal_values, blocks, seed & MASK32, seed >> 32, stream, start, float(mean), float(std), out,
                 work=count)
    return out


stamp_kernels(globals())  # after the last kernel (see backend.stamp_kernels)
