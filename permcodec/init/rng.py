"""Philox4x32-10 (Salmon et al., SC'11; Random123), the counter-based RNG of permcodec.

One call maps a 128-bit counter (four 32-bit words) and a 64-bit key (two words)
to four 32-bit output words. permcodec lays the counter out as

    c0, c1 = block index (low, high 32 bits)
    c2     = stream id (one per tensor)
    c3     = substream (0: values, 1: the keep-mask of sparse/shared pools)

and uses the 64-bit seed as the key (k0 = low 32 bits, k1 = high 32 bits), so
any block range of any tensor can be generated on its own. See specs/rng.md.

Three implementations give identical words:
- ``philox_blocks`` uses torch int64 tensors and runs unchanged on CPU and CUDA
  (torch.uint32 lacks shifts, and 32x32-bit products overflow int64, so each
  product is split into two 32x16-bit halves); on the CPU it hands the work to
- a numba kernel (``_philox_numba``) when numba is importable, about ten times
  faster; PERMCODEC_BACKEND=numpy keeps the torch path;
- ``philox_blocks_numpy`` (in ``philox``, with the constants and the argument
  checks) uses numpy uint64 and is the reference for the tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import backend
from ..errors import SpecError
from .philox import MASK32, MAX_BLOCKS, PHILOX_M0, PHILOX_M1, check_seed, check_stream, round_keys

if TYPE_CHECKING:
    import torch

# Blocks generated per pass: large enough to amortise kernel launches, small
# enough that the ~20 int64 temporaries of a round stay near the CPU caches.
CHUNK_BLOCKS = 1 << 16


def _split_multiplier(m: int) -> tuple[int, int]:
    return m >> 16, m & 0xFFFF


_M0_HI, _M0_LO = _split_multiplier(PHILOX_M0)
_M1_HI, _M1_LO = _split_multiplier(PHILOX_M1)


def _mulhilo_torch(a: "torch.Tensor", m_hi: int, m_lo: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """High and low 32-bit words of a * (m_hi * 2^16 + m_lo), for int64 a in [0, 2^32).

    Each partial product stays below 2^48, so nothing overflows int64.
    """
    upper = a * m_hi
    lower = a * m_lo
    middle = ((upper & 0xFFFF) << 16) + lower
    hi = (upper >> 16) + (middle >> 32)
    lo = middle & MASK32
    return hi, lo


def philox_rounds_torch(c0, c1, c2, c3, seed: int):
    """Ten Philox rounds on int64 tensors holding 32-bit words; returns the four output words."""
    for k0, k1 in round_keys(seed):
        hi0, lo0 = _mulhilo_torch(c0, _M0_HI, _M0_LO)
        hi1, lo1 = _mulhilo_torch(c2, _M1_HI, _M1_LO)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_blocks(seed: int, stream: int, substream: int, start: int, count: int,
                  device="cpu") -> "torch.Tensor":
    """Output words of blocks ``start .. start+count-1`` as an int64 tensor [count, 4] of 32-bit values."""
    import torch  # here, so that the header checks (container) can use this module without torch

    seed = check_seed(seed)
    stream = check_stream(stream)
    if start < 0 or count < 0 or start + count > MAX_BLOCKS:
        raise SpecError(f"block range [{start}, {start + count}) is outside [0, 2**63)")
    if torch.device(device).type == "cpu" and compiled_kernel() is not None:
        return torch.from_numpy(compiled_kernel().philox_blocks(seed, stream, substream, start, count))
    out = torch.empty((count, 4), dtype=torch.int64, device=device)
    for first in range(0, count, CHUNK_BLOCKS):
        n = min(CHUNK_BLOCKS, count - first)
        index = torch.arange(n, dtype=torch.int64, device=device) + (start + first)  # an end of 2^63 overflows int64
        c0 = index & MASK32
        c1 = (index >> 32) & MASK32
        c2 = torch.full_like(c0, stream)
        c3 = torch.full_like(c0, substream)
        words = philox_rounds_torch(c0, c1, c2, c3, seed)
        out[first:first + n] = torch.stack(words, dim=1)
    return out


def compiled_kernel():
    """The numba module, or None without numba or with PERMCODEC_BACKEND=numpy (then torch runs Philox)."""
    if backend.chosen() == "numpy":
        return None
    from . import _philox_numba

    return _philox_numba
