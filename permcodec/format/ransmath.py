"""The constants of the rANS coder and its quantization (specs/format.md 9.1-9.2).

A leaf module: the public coder (``rans``) and both kernel backends import it,
so no constant flows upward from a kernel to its caller.
"""

from __future__ import annotations

import numpy as np

PROB_BITS = 31
PROB_SCALE = 1 << PROB_BITS        # M: quantized probabilities sum to this
STATE_LOW = 1 << 32                # L: states live in [L, 2^64)
WORD_BITS = 32
MAX_ROW_LENGTH = PROB_SCALE        # every freq stays >= 1 while Q <= M


def quantized(cum: np.ndarray, left: np.ndarray) -> np.ndarray:
    """floor(cum * M / Q), elementwise, exact in int64 (cum <= Q <= 2^31)."""
    return (cum << PROB_BITS) // left
