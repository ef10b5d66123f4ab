"""Scheme ``sparse`` (specs/format.md Section 11a): a row's zeros as one class, its other elements by the swap code.

A row with z zeros costs log2(n! / z!) bits, what multiset costs for a sparse
pool whose other values are distinct. The decoder needs neither a sort nor a
search: each position is one rANS step and one swap among the row's items.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import arrays
from .. import rans
from .base import LanesScheme, RowsToEncode, lanes_for

if TYPE_CHECKING:
    import torch

    from ...perm import SortedRows
    from .levels import Level


class Sparse(LanesScheme):
    id = "sparse"

    def encode(self, tensor: RowsToEncode, level: "Level") -> tuple[dict, bytes]:
        lanes = lanes_for(tensor.multiset_bits, tensor.initial.rows.shape[0], level)
        return {"lanes": lanes}, rans.encode_sparse(item_indices(tensor.sources, tensor.initial).numpy(), lanes)

    def decode(self, params: dict, initial: "torch.Tensor", section: bytes, what: str) -> "torch.Tensor":
        xp = arrays.of(initial)
        if xp is arrays.NUMPY:
            return rans.decode_sparse_onto(section, initial, params["lanes"], what)
        import numpy as np

        # another device: decode each position's source index on the host (a zero: 0, else its position + 1,
        # as uint32: a row may hold 2^31 positions), then gather there; a zero position takes the row's first zero
        zero = xp.to_numpy(initial == 0)
        rows, n = zero.shape
        keys = np.where(zero, np.uint32(0), np.arange(1, n + 1, dtype=np.uint32))
        decoded = rans.decode_sparse_onto(section, keys, params["lanes"], what).astype(np.int64)
        first_zero = zero.argmax(axis=1) if n else np.zeros(rows, np.int64)  # argmax of no column fails
        index = np.where(decoded > 0, decoded - 1, first_zero[:, None])
        return xp.take_rows(initial, xp.from_numpy(index))


def item_indices(pi: "torch.Tensor", initial: "SortedRows") -> "torch.Tensor":
    """int64 [rows, n]: at each trained position, the index among the initial row's nonzero elements (in
    position order) of its source ``pi`` (``RowsToEncode.sources``), or -1 for a zero."""
    import torch

    nonzero = initial.rows != 0
    item_of = torch.cumsum(nonzero, dim=1) - 1
    return torch.where(torch.gather(nonzero, 1, pi), torch.gather(item_of, 1, pi), -1)


SPARSE = Sparse()
