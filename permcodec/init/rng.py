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
- ``philox_blocks_numpy`` uses numpy uint64 and is the reference for the tests.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SpecError

if TYPE_CHECKING:
    import torch

RNG_NAME = "philox4x32-10"

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1
ROUNDS = 10

MASK32 = 0xFFFFFFFF
MAX_SEED = 2**64 - 1
MAX_STREAM = 2**32 - 1
MAX_BLOCKS = 2**63  # block indices stay non-negative in int64
SUBSTREAM_VALUES = 0
SUBSTREAM_MASK = 1

# Blocks generated per pass: large enough to amortise kernel launches, small
# enough that the ~20 int64 temporaries of a round stay near the CPU caches.
CHUNK_BLOCKS = 1 << 16


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise SpecError(f"seed must be an integer in [0, 2**64), found {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise SpecError(f"seed must be an integer in [0, 2**64), found {seed}")
    return int(seed)


def check_stream(stream) -> int:
    if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or not 0 <= int(stream) <= MAX_STREAM:
        raise SpecError(f"stream must be an integer in [0, 2**32), found {stream!r}")
    return int(stream)


def round_keys(seed: int) -> list[tuple[int, int]]:
    """The key of each of the ten rounds: the seed, bumped by (W0, W1) mod 2^32 per round."""
    k0, k1 = seed & MASK32, seed >> 32
    return [((k0 + r * PHILOX_W0) & MASK32, (k1 + r * PHILOX_W1) & MASK32) for r in range(ROUNDS)]


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
    """The numba module, or None without numba or with PERMCODEC_BACKEND=numpy."""
    wanted = os.environ.get("PERMCODEC_BACKEND", "numba")
    if wanted not in ("numba", "numpy"):
        raise SpecError(f"PERMCODEC_BACKEND must be 'numba' or 'numpy', found {wanted!r}")
    if wanted == "numpy":
        return None
    try:
        from . import _philox_numba
    except ImportError:
        return None
    return _philox_numba


def philox_numpy(counter: np.ndarray, seed: int) -> np.ndarray:
    """Reference Philox4x32-10: counter uint64 [n, 4] of 32-bit words -> uint64 [n, 4]."""
    c = [counter[:, i].astype(np.uint64) for i in range(4)]
    m0, m1, mask = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(MASK32)
    for k0, k1 in round_keys(seed):
        p0 = c[0] * m0
        p1 = c[2] * m1
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & mask,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & mask]
    return np.stack(c, axis=1)


def philox_blocks_numpy(seed: int, stream: int, substream: int, start: int, count: int) -> np.ndarray:
    """Reference for ``philox_blocks``: uint64 [count, 4]."""
    index = np.arange(start, start + count, dtype=np.uint64)
    counter = np.stack([index & np.uint64(MASK32), index >> np.uint64(32),
                        np.full(count, stream, np.uint64), np.full(count, substream, np.uint64)], axis=1)
    return philox_numpy(counter, check_seed(seed))
