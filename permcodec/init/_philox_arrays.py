"""Philox4x32-10 on int64 arrays (permcodec.init.rng), numpy or torch (``permcodec.arrays``): CPU and CUDA.

torch.uint32 lacks shifts, and 32x32-bit products overflow int64, so each
product is split into two 32x16-bit halves whose partial products stay
below 2^48. Words equal those of ``_philox_numba`` and the numpy reference.
"""

from __future__ import annotations

from .. import arrays
from .philox import MASK32, PHILOX_M0, PHILOX_M1, round_keys

# Blocks generated per pass: large enough to amortise kernel launches, small
# enough that the ~20 int64 temporaries of a round stay near the CPU caches.
CHUNK_BLOCKS = 1 << 16


def _split_multiplier(m: int) -> tuple[int, int]:
    return m >> 16, m & 0xFFFF


_M0_HI, _M0_LO = _split_multiplier(PHILOX_M0)
_M1_HI, _M1_LO = _split_multiplier(PHILOX_M1)


def _mulhilo(a, m_hi: int, m_lo: int):
    """High and low 32-bit words of a * (m_hi * 2^16 + m_lo), for int64 a in [0, 2^32)."""
    upper = a * m_hi
    lower = a * m_lo
    middle = ((upper & 0xFFFF) << 16) + lower
    hi = (upper >> 16) + (middle >> 32)
    lo = middle & MASK32
    return hi, lo


def philox_rounds(c0, c1, c2, c3, seed: int):
    """Ten Philox rounds on int64 arrays holding 32-bit words; returns the four output words."""
    for k0, k1 in round_keys(seed):
        hi0, lo0 = _mulhilo(c0, _M0_HI, _M0_LO)
        hi1, lo1 = _mulhilo(c2, _M1_HI, _M1_LO)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_blocks(seed: int, stream: int, substream: int, start: int, count: int, device="cpu"):
    """Output words of blocks ``start .. start+count-1`` (checked by the caller): int64 [count, 4] on ``device``
    (a torch device, or an ``arrays`` namespace)."""
    xp = arrays.on(device)
    out = xp.empty((count, 4), xp.int64)
    for first in range(0, count, CHUNK_BLOCKS):
        n = min(CHUNK_BLOCKS, count - first)
        index = xp.arange(n) + (start + first)  # an end of 2^63 overflows int64
        c0 = index & MASK32
        c1 = (index >> 32) & MASK32
        c2 = xp.full_like(c0, stream)
        c3 = xp.full_like(c0, substream)
        words = philox_rounds(c0, c1, c2, c3, seed)
        out[first:first + n] = xp.stack(words, axis=1)
    return out
