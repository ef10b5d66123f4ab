"""Philox4x32-10 (Salmon et al., SC'11; Random123), the counter-based RNG of permcodec.

One call maps a 128-bit counter (four 32-bit words) and a 64-bit key (two words)
to four 32-bit output words. permcodec lays the counter out as

    c0, c1 = block index (low, high 32 bits)
    c2     = stream id (one per tensor)
    c3     = substream (0: values, 1: the keep-mask of sparse/shared pools)

and uses the 64-bit seed as the key (k0 = low 32 bits, k1 = high 32 bits), so
any block range of any tensor can be generated on its own. See specs/rng.md.

Three implementations give identical words, with the same function name:
- ``_philox_numba.philox_blocks``, compiled, on the CPU when numba is installed
  (about ten times faster than torch there);
- ``_philox_arrays.philox_blocks``, int64 numpy arrays or torch tensors, on CUDA
  and wherever PERMCODEC_BACKEND=numpy;
- ``philox.philox_blocks_numpy``, the reference for the tests.
This module checks the arguments and picks one.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .. import arrays, backend
from ..errors import SpecError
from .philox import MAX_BLOCKS, check_seed, check_stream

if TYPE_CHECKING:
    import torch


def philox_blocks(seed: int, stream: int, substream: int, start: int, count: int,
                  device="cpu") -> "torch.Tensor":
    """Output words of blocks ``start .. start+count-1`` as int64 [count, 4] of 32-bit values: a tensor on
    ``device``, or the array type of an ``arrays`` namespace given as ``device``."""
    seed = check_seed(seed)
    stream = check_stream(stream)
    if start < 0 or count < 0 or start + count > MAX_BLOCKS:
        raise SpecError(f"block range [{start}, {start + count}) is outside [0, 2**63)")
    xp = arrays.on(device)
    if on_host(xp) and compiled_kernel(count) is not None:
        return xp.from_numpy(compiled_kernel(count).philox_blocks(seed, stream, substream, start, count))
    from . import _philox_arrays

    return _philox_arrays.philox_blocks(seed, stream, substream, start, count, xp)


def on_host(xp) -> bool:
    """Whether an ``arrays`` namespace computes on the CPU (where the compiled kernels can serve it)."""
    return xp is arrays.NUMPY or xp.device.type == "cpu"


# Loading numba and its cached kernels costs a process about 0.5 s; the array path (numpy or torch) draws about
# 2^21 blocks in that time. So small jobs in a process that has not loaded numba (``info``, small models) stay on it.
COMPILED_MIN_BLOCKS = 1 << 21


def compiled_kernel(blocks: int | None = None):
    """The numba module, or None (then ``_philox_arrays`` runs Philox): without numba, with
    PERMCODEC_BACKEND=numpy, or for a job of fewer than COMPILED_MIN_BLOCKS ``blocks`` while numba is not loaded
    yet. Both give the same words."""
    if backend.chosen() == "numpy":
        return None
    if blocks is not None and blocks < COMPILED_MIN_BLOCKS and "numba" not in sys.modules:
        return None
    from . import _philox_numba

    return _philox_numba
