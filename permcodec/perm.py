"""Rows, ranks and the LaPerm sync, shared by the trainer and the codec.

What a row is (``row_shape``) is defined in ``rows``. Ranks use a canonical tie
rule: equal values are ranked by position (a stable sort), so the rank vector of
a row is unique on every device. Everything is
vectorized over rows and runs on the tensor's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SpecError
from .rows import row_shape  # noqa: F401 (the one definition of a row; re-exported)


def as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """A [rows, length] view (or copy, if not contiguous) of ``tensor``."""
    return tensor.reshape(row_shape(tensor.shape))


def row_ranks(rows: torch.Tensor) -> torch.Tensor:
    """rank[r, j] = position of rows[r, j] in its row sorted ascending, ties broken by position (int64)."""
    order = torch.argsort(rows, dim=1, stable=True)
    return inverse_permutation(order)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """inverse[r, order[r, j]] = j for each row of an int64 permutation matrix."""
    if order.numel() == 0:  # no rows: an arange of the row length would be sized by nothing real
        return torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def sorted_pool(rows: torch.Tensor) -> torch.Tensor:
    """Each row's values sorted ascending."""
    return torch.sort(rows, dim=1).values


def place(pool_sorted: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """out[r, j] = pool_sorted[r, ranks[r, j]]: a sorted pool laid out in a given rank order."""
    return torch.gather(pool_sorted, 1, ranks)


def sync(trained: torch.Tensor, pool_sorted: torch.Tensor) -> torch.Tensor:
    """The LaPerm sync: each row becomes its sorted initial values in the rank order of the trained row."""
    rows = as_rows(trained)
    if tuple(pool_sorted.shape) != tuple(rows.shape):
        raise SpecError(f"sorted pool has shape {tuple(pool_sorted.shape)}, rows are {tuple(rows.shape)}")
    return place(pool_sorted.to(rows.dtype), row_ranks(rows)).reshape(trained.shape)


def same_bits_per_row(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bool [rows]: whether row r of float32 ``a`` and ``b`` hold identical bits."""
    return (a.view(torch.int32) == b.view(torch.int32)).all(dim=1)


def is_row_permutation(candidate: torch.Tensor, pool_sorted: torch.Tensor) -> torch.Tensor:
    """Bool [rows]: whether each row of ``candidate`` holds exactly the bits of the sorted pool's row."""
    return same_bits_per_row(sorted_pool(as_rows(candidate)), pool_sorted)


@dataclass(frozen=True)
class SortedRows:
    """Rows with their stable sort order and ranks, from one argsort: the pool and the ranks share it."""

    rows: torch.Tensor
    order: torch.Tensor
    ranks: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor) -> "SortedRows":
        if rows.numel() == 0:  # torch's argsort sizes work by the row length even with no rows
            order = torch.empty(rows.shape, dtype=torch.int64, device=rows.device)
        else:
            order = torch.argsort(rows, dim=1, stable=True)
        return cls(rows, order, inverse_permutation(order))

    def pool(self) -> torch.Tensor:
        return torch.gather(self.rows, 1, self.order)


def class_starts(pool_sorted: torch.Tensor) -> torch.Tensor:
    """Bool [rows, n]: where a run of equal bits (a class of the pool) begins; every row's first position."""
    bits = pool_sorted.contiguous().view(torch.int32)
    starts = torch.ones_like(bits, dtype=torch.bool)
    starts[:, 1:] = bits[:, 1:] != bits[:, :-1]
    return starts


def permutation_bound_bits(pool_sorted: torch.Tensor) -> float:
    """Information bound of the row permutations: sum over rows of log2(n! / prod_v m_v!).

    m_v are the multiplicities of the distinct values of each row (ties make
    fewer arrangements distinguishable). Not on the bit-exact path.
    """
    rows, n = pool_sorted.shape
    if rows == 0 or n == 0:
        return 0.0
    run_ids = torch.cumsum(class_starts(pool_sorted).reshape(-1).to(torch.int64), 0) - 1
    lengths = torch.bincount(run_ids).to(torch.float64)
    nats = rows * math.lgamma(n + 1) - torch.lgamma(lengths + 1).sum().item()
    return nats / math.log(2)
