"""Scheme ``multiset`` (specs/format.md Section 11): the class of each position, arrangement-coded in rANS.

A class is a distinct value of the row, ascending. Coded with the pool's
multiplicities, a row costs log2(n! / prod m_v!) bits: far below log2(n!)
for sparse and shared-value pools. The decoder sorts the pool to find them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ... import arrays, backend
from .. import rans
from .base import LanesScheme, RowsToEncode, lanes_for

if TYPE_CHECKING:
    import torch

    from .levels import Level


@dataclass(frozen=True)
class PoolClasses:
    """The distinct values of each sorted row ("classes", ascending) and how often each occurs."""

    of_sorted: "torch.Tensor"   # int64 [rows, n]: class of each sorted position
    counts: "torch.Tensor"      # int64 [rows, K]: occurrences per class, zero-padded to the largest K

    @classmethod
    def of(cls, pool_sorted: "torch.Tensor") -> "PoolClasses":
        from ...perm import class_starts

        xp = arrays.of(pool_sorted)
        rows, n = pool_sorted.shape
        of_sorted = xp.cumsum(xp.astype(class_starts(pool_sorted), xp.int64), axis=1) - 1
        k = int(of_sorted[:, -1].max()) + 1 if rows and n else 0
        return cls(of_sorted, xp.add_at_rows((rows, k), of_sorted, xp.int64))

    def values(self, pool_sorted: "torch.Tensor") -> "torch.Tensor":
        """float32 [rows, K]: the value of each class (0.0 in the padding)."""
        xp = arrays.of(pool_sorted)
        return xp.put_rows_into(xp.zeros(tuple(self.counts.shape), xp.float32), self.of_sorted, pool_sorted)


class Multiset(LanesScheme):
    id = "multiset"

    def encode(self, tensor: RowsToEncode, level: "Level") -> tuple[dict, bytes]:
        import torch

        trained = tensor.trained
        classes = PoolClasses.of(tensor.pool)
        lanes = lanes_for(tensor.multiset_bits, trained.rows.shape[0], level)
        symbols = torch.empty_like(trained.order).scatter_(1, trained.order, classes.of_sorted)
        return {"lanes": lanes}, rans.encode_arrangement(symbols.numpy(), classes.counts.numpy(), lanes)

    def decode(self, params: dict, initial: "torch.Tensor", section: bytes, what: str) -> "torch.Tensor":
        xp = arrays.of(initial)
        rows, n = initial.shape
        pool = xp.sort_rows(initial)
        if xp is arrays.NUMPY and rows * n and n > 1 and backend.chosen() == "numba":
            return rans.decode_classes_onto(section, pool, params["lanes"], what)
        classes = PoolClasses.of(pool)
        symbols = rans.decode_arrangement(section, xp.to_numpy(classes.counts), rows, n, params["lanes"], what)
        return xp.take_rows(classes.values(pool), xp.from_numpy(symbols))


MULTISET = Multiset()
