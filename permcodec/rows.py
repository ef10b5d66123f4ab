"""What a row of a tensor is: the one definition, shared by the trainer, the codec and the header checks.

A row is one output unit's weight vector:
- 1-D tensor [n]            -> one row of n
- Linear [out, in]          -> out rows of in
- Conv [out, in, *kernel]   -> out rows of in * prod(kernel), in row-major order

Plain integers only (no torch), so a header can be checked before anything is decoded.
"""

from __future__ import annotations

from .errors import SpecError


def row_shape(shape) -> tuple[int, int]:
    """(rows, row length) of a tensor of this shape."""
    shape = tuple(shape)
    if len(shape) == 0:
        raise SpecError("a 0-D tensor has no row definition; rows need a tensor of dim >= 1")
    if len(shape) == 1:
        return 1, shape[0]
    length = 1
    for size in shape[1:]:
        length *= size
    return shape[0], length
