"""Philox4x32-10's constants, argument checks and numpy reference (specs/rng.md §3).

A leaf module, torch-free: the header checks, the torch path (``rng``) and the
numba kernel (``_philox_numba``) all import it, so no constant flows upward
from a kernel to its caller.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError

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
SUBSTREAM_BLOCKS = 2  # the per-row position order of the shuffled block layout


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
