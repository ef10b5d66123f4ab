"""Rows, ranks and the LaPerm sync, shared by the trainer and the codec.

What a row is (``row_shape``) is defined in ``rows``. Ranks use a canonical tie
rule: equal values are ranked by position (a stable sort), so the rank vector of
a row is unique on every device. Everything is
vectorized over rows and runs where its input lives: on a torch tensor's
device, or on numpy arrays (``permcodec.arrays``; the CPU decoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import arrays
from .errors import SpecError
from .rows import BlockLayout, full_rows, row_shape  # noqa: F401 (the one definition of a row; re-exported)

if TYPE_CHECKING:
    import torch

    from .init.initspec import InitSpec, TensorInit


def as_rows(tensor):
    """A [rows, length] view (or copy, if not contiguous) of ``tensor``."""
    return tensor.reshape(row_shape(tensor.shape))


def row_ranks(rows):
    """rank[r, j] = position of rows[r, j] in its row sorted ascending, ties broken by position (int64)."""
    return inverse_permutation(arrays.of(rows).argsort_rows(rows))


def inverse_permutation(order):
    """inverse[r, order[r, j]] = j for each row of an int64 permutation matrix."""
    xp = arrays.of(order)
    rows, n = order.shape
    if rows * n == 0:  # no rows: an arange of the row length would be sized by nothing real
        return xp.empty((rows, n), xp.int64)
    return xp.put_rows(order, xp.broadcast_rows(xp.arange(n), rows, n))


def sorted_pool(rows):
    """Each row's values sorted ascending."""
    return arrays.of(rows).sort_rows(rows)


def place(pool_sorted, ranks):
    """out[r, j] = pool_sorted[r, ranks[r, j]]: a sorted pool laid out in a given rank order."""
    return arrays.of(pool_sorted).take_rows(pool_sorted, ranks)


def sync(trained: "torch.Tensor", pool_sorted: "torch.Tensor") -> "torch.Tensor":
    """The LaPerm sync: each row becomes its sorted initial values in the rank order of the trained row."""
    rows = as_rows(trained)
    if tuple(pool_sorted.shape) != tuple(rows.shape):
        raise SpecError(f"sorted pool has shape {tuple(pool_sorted.shape)}, rows are {tuple(rows.shape)}")
    return place(pool_sorted.to(rows.dtype), row_ranks(rows)).reshape(trained.shape)


def same_bits_per_row(a, b):
    """Bool [rows]: whether row r of float32 ``a`` and ``b`` hold identical bits."""
    xp = arrays.of(a)
    return xp.all_rows(xp.bits_as(a, xp.int32) == xp.bits_as(b, xp.int32))


def is_row_permutation(candidate, pool_sorted):
    """Bool [rows]: whether each row of ``candidate`` holds exactly the bits of the sorted pool's row."""
    return same_bits_per_row(sorted_pool(as_rows(candidate)), pool_sorted)


@dataclass(frozen=True)
class SortedRows:
    """Rows with their stable sort order and ranks, from one argsort: the pool and the ranks share it."""

    rows: "torch.Tensor"  # or numpy arrays, all three alike
    order: "torch.Tensor"
    ranks: "torch.Tensor"

    @classmethod
    def of(cls, rows) -> "SortedRows":
        order = arrays.of(rows).argsort_rows(rows)
        return cls(rows, order, inverse_permutation(order))

    def pool(self):
        return place(self.rows, self.order)


def class_starts(pool_sorted):
    """Bool [rows, n]: where a run of equal bits (a class of the pool) begins; every row's first position."""
    xp = arrays.of(pool_sorted)
    bits = xp.bits_as(pool_sorted, xp.int32)
    starts = xp.full(tuple(bits.shape), True, xp.bool)
    starts[:, 1:] = bits[:, 1:] != bits[:, :-1]
    return starts


def permutation_bound_bits(pool_sorted) -> float:
    """Information bound of the row permutations: sum over rows of log2(n! / prod_v m_v!).

    m_v are the multiplicities of the distinct values of each row (ties make
    fewer arrangements distinguishable). Not on the bit-exact path.
    """
    rows, n = pool_sorted.shape
    if rows == 0 or n == 0:
        return 0.0
    starts = arrays.of(pool_sorted).to_numpy(class_starts(pool_sorted)).reshape(-1)
    lengths = np.diff(np.append(np.flatnonzero(starts), starts.size))
    multiplicities, how_often = np.unique(lengths, return_counts=True)
    ties = sum(int(times) * math.lgamma(int(m) + 1) for m, times in zip(multiplicities, how_often))
    return (rows * math.lgamma(n + 1) - ties) / math.log(2)


# ---------------------------------------------------------------- blocks

def grouped_order(block: BlockLayout | None, rows: int, n: int, seed: int, stream: int, device):
    """Each row's positions in grouped order (block by block): int64 [n] shared by all rows, [rows, n]
    for the shuffled layout, or None where the grouped order is the row itself (no blocks, contiguous)."""
    if block is None or block.layout == "contiguous" or n == 0:
        return None
    xp = arrays.on(device)
    q = block.block_count(n)
    j = xp.arange(n)
    strided = xp.argsort_rows(((j % q) * n + j).reshape(1, n)).reshape(n)  # block t = j mod q; keys distinct
    if block.layout == "strided":
        return strided
    from .init.distributions import row_orders  # here: perm is imported by the header checks' callers too
    from .init.philox import SUBSTREAM_BLOCKS

    shuffled = row_orders(seed, stream, SUBSTREAM_BLOCKS, 0, rows, n, xp)
    return shuffled[:, strided]


@dataclass(frozen=True)
class BlockView:
    """A tensor's rows seen as blocks: ``split`` gives one [rows * count, size] matrix per run of equal
    blocks (``BlockLayout.groups``), each of whose rows is one block; ``join`` puts such matrices back.
    Without blocks there is one matrix, the rows themselves, and both are views (no copy, no reorder)."""

    rows: int
    n: int
    groups: tuple[tuple[int, int], ...]
    order: "torch.Tensor | None" = None  # or a numpy array

    @classmethod
    def of(cls, record: "TensorInit", device="cpu") -> "BlockView":
        """The view of ``record``'s tensor on ``device`` (a torch device, or an ``arrays`` namespace)."""
        rows, n = row_shape(record.shape)
        if record.block is None:
            return cls.whole_rows(rows, n)
        order = grouped_order(record.block, rows, n, record.seed, record.stream, device)
        return cls(rows, n, record.block.groups(n), order)

    @classmethod
    def whole_rows(cls, rows: int, n: int) -> "BlockView":
        return cls(rows, n, full_rows(n))

    def _index(self, like):
        return arrays.of(like).broadcast_rows(self.order, self.rows, self.n)

    def split(self, rows) -> list:
        """[rows, n] -> one [rows * count, size] matrix per group, its rows the blocks in row-major order."""
        grouped = rows if self.order is None else place(rows, self._index(rows))
        parts, column = [], 0
        for count, size in self.groups:
            parts.append(grouped[:, column:column + count * size].reshape(self.rows * count, size))
            column += count * size
        return parts

    def join(self, parts: list):
        """The [rows, n] rows whose ``split`` is ``parts``."""
        xp = arrays.of(parts[0])
        pieces = [part.reshape(self.rows, count * size) for part, (count, size) in zip(parts, self.groups)]
        grouped = pieces[0] if len(pieces) == 1 else xp.cat(pieces, axis=1)
        if self.order is None:
            return grouped
        return xp.put_rows(self._index(grouped), grouped)

    def row_of(self, group: int, block_row: int) -> int:
        """The tensor row that row ``block_row`` of group ``group``'s matrix lies in."""
        return block_row // self.groups[group][0]


@dataclass(frozen=True)
class RowPools:
    """A permuted tensor's sorted initial blocks (its rows, without blocks): what a LaPerm sync places."""

    view: BlockView
    sorted: tuple

    @classmethod
    def of(cls, initial, view: BlockView) -> "RowPools":
        return cls(view, tuple(sorted_pool(part) for part in view.split(as_rows(initial))))

    def sync(self, trained: "torch.Tensor") -> "torch.Tensor":
        """Each block becomes its sorted initial values in the rank order of the trained block."""
        parts = self.view.split(as_rows(trained))
        synced = [sync(part, pool) for part, pool in zip(parts, self.sorted)]
        return self.view.join(synced).reshape(trained.shape)

    def bound_bits(self) -> float:
        """The information bound of the tensor's arrangement: log2(b! / prod m_v!) summed over its blocks."""
        return sum(permutation_bound_bits(pool) for pool in self.sorted)

    def holds(self, candidate) -> bool:
        """Whether every block of ``candidate`` holds exactly the bits of its initial block."""
        parts = self.view.split(as_rows(candidate))
        return all(bool(is_row_permutation(part, pool).all()) for part, pool in zip(parts, self.sorted))


def pools_of(record: "TensorInit", device="cpu") -> RowPools:
    """The sorted initial blocks of a tensor of an init spec, regenerated on ``device``."""
    return RowPools.of(record.regenerate(device=device), BlockView.of(record, device))


def synced_state_dict(state_dict: "dict[str, torch.Tensor]", spec: "InitSpec", *,
                      reset_bn: bool = False) -> "dict[str, torch.Tensor]":
    """What a sync would write now, without the codec: each tensor of ``spec`` becomes its sorted init
    pool in the rank order of its trained rows; the rest is copied. ``reset_bn`` (the run's setting) also
    sets BatchNorm gamma to 1 and beta to 0, as LaPerm's sync does. Synced weights come back unchanged."""
    import torch

    with torch.no_grad():
        return _synced(state_dict, spec, reset_bn)


def _synced(state_dict: "dict[str, torch.Tensor]", spec: "InitSpec", reset_bn: bool) -> "dict[str, torch.Tensor]":
    import torch

    synced = {name: tensor.clone() for name, tensor in state_dict.items()}
    for record in spec:
        if record.name not in state_dict:
            raise SpecError(f"init spec names tensor {record.name!r}, which the state dict does not have")
        trained = state_dict[record.name]
        synced[record.name] = pools_of(record, trained.device).sync(trained)
    if reset_bn:
        for name in _batch_norm_affine(state_dict):
            synced[name] = torch.ones_like(synced[name]) if name.endswith("weight") else torch.zeros_like(synced[name])
    return synced


def _batch_norm_affine(state_dict: dict) -> list[str]:
    """The BatchNorm weight and bias names: those beside a running_mean buffer."""
    prefixes = [name[: -len("running_mean")] for name in state_dict if name.endswith("running_mean")]
    return [prefix + leaf for prefix in prefixes for leaf in ("weight", "bias") if prefix + leaf in state_dict]
