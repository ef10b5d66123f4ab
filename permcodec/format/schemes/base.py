"""What every index scheme and raw codec is, and the pieces two schemes share.

An index scheme codes the rows of a permuted tensor against its regenerated
initial rows; a raw codec stores any other tensor's bytes. Each is one object
with an ``id`` (the string the header stores), a parameter check the container
runs on every record, and ``encode`` / ``decode``; ``schemes/__init__.py``
registers them. Adding a scheme means one file here and one table entry.

torch is imported inside ``encode`` and ``decode`` only, so that the header
checks (container, ``info``) never load it.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from ...errors import FormatError
from ...keys import key_mismatch
from .. import rans
from ..ransmath import MAX_ROW_LENGTH

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ...perm import SortedRows
    from .levels import Level


class RowsToEncode:
    """A permuted tensor on its way to a section: its trained and initial rows, with figures schemes share."""

    def __init__(self, trained: "SortedRows", initial: "SortedRows"):
        self.trained = trained
        self.initial = initial

    @cached_property
    def sources(self) -> "torch.Tensor":
        """pi with trained[j] = initial[pi[j]] per row; ties map the k-th equal value to the k-th, in position
        order (what exact codes, and what sparse codes among the nonzero elements)."""
        import torch

        return torch.empty_like(self.trained.order).scatter_(1, self.trained.order, self.initial.order)

    @cached_property
    def pool(self) -> "torch.Tensor":
        """The sorted initial values of each row."""
        return self.initial.pool()

    @cached_property
    def delta_codes(self):
        """zigzag(rank of trained row - rank of initial row), flat: what delta stores (uint64 numpy)."""
        from ... import arrays
        from ..indexcode import zigzag

        displacement = self.trained.ranks - self.initial.ranks
        return zigzag(arrays.of(displacement).to_numpy(displacement).reshape(-1))

    @cached_property
    def exact_bits(self) -> float:
        """rows * log2(n!): what exact codes, and what multiset saves on."""
        rows, n = self.initial.rows.shape
        return rows * math.lgamma(n + 1) / math.log(2)

    @cached_property
    def multiset_bits(self) -> float:
        """sum over rows of log2(n! / prod m_v!), the bound with repeated values."""
        from ...perm import permutation_bound_bits

        return permutation_bound_bits(self.pool)

    @cached_property
    def sparse_bits(self) -> float:
        """sum over rows of log2(n! / z!), z the row's zeros: what sparse codes."""
        import numpy as np

        from ... import arrays

        initial = self.initial.rows
        rows, n = initial.shape
        zeros, how_often = np.unique(np.count_nonzero(arrays.of(initial).to_numpy(initial == 0), axis=1),
                                     return_counts=True)
        return self.exact_bits - sum(int(times) * math.lgamma(int(z) + 1) for z, times in zip(zeros, how_often)) \
            / math.log(2)


class IndexScheme(Protocol):
    id: str
    max_row_length: int | None  # longest row the scheme can code; None: any

    def check_params(self, params, rows: int, n: int, where: str) -> None:
        """FormatError unless ``params`` (a record's scheme_params) are valid for a [rows, n] tensor."""

    def check_layout(self, params: dict, rows: int, n: int, section: bytes, what: str) -> None:
        """The checks of a section that need no regenerated pool, done before any pool is drawn."""

    def encode(self, tensor: RowsToEncode, level: "Level") -> tuple[dict, bytes]:
        """(scheme_params, section)."""

    def decode(self, params: dict, initial: "torch.Tensor", section: bytes, what: str) -> "torch.Tensor":
        """The trained rows [rows, n] from the initial rows (on the target device) and the section. ``initial``
        may be overwritten: the decoder hands each scheme rows it drew for it alone."""


class RawCodec(Protocol):
    id: str

    def encode(self, data: bytes, itemsize: int, zstd_level: int) -> bytes:
        """The section of a tensor's little-endian bytes."""

    def decode(self, section: bytes, itemsize: int, count: int, what: str) -> bytearray:
        """The ``count * itemsize`` bytes of a tensor, in a bytearray of its own; FormatError for a section that
        yields anything else."""

    def decode_many(self, sections: list[tuple[bytes, int, int, str]]) -> list[np.ndarray | None]:
        """``decode`` of each ``(section, itemsize, count, what)`` of many small tensors at once: a writeable uint8
        array of the tensor's bytes, or None for a section ``decode`` rejects (it raises the error)."""


# ---------------------------------------------------------------- shared by exact and multiset

def check_lanes_params(scheme_id: str, params, rows: int, n: int, where: str) -> None:
    """The parameters of the rANS schemes: exactly ``lanes``, in [1, rows]; rows of at most 2^31."""
    if key_mismatch(params, {"lanes"}):
        raise FormatError(f"{where}: scheme {scheme_id!r} takes exactly the parameter 'lanes', found {params!r}")
    lanes = params["lanes"]
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= max(rows, 1):
        raise FormatError(f"{where}: lanes must be an integer in [1, {max(rows, 1)}] (the row count), "
                          f"found {lanes!r}")
    if n > MAX_ROW_LENGTH:
        raise FormatError(f"{where}: scheme {scheme_id!r} needs rows of at most 2^31 elements, found {n}")


def check_lanes_layout(params: dict, rows: int, n: int, section: bytes, what: str) -> None:
    """A rANS section's lane word counts; with nothing coded, every lane must be the bare final state."""
    if rows * n == 0:
        rans.check_nothing_coded(section, params["lanes"], what)
    else:
        rans.lane_lengths(section, params["lanes"], what)


class LanesScheme:
    """What the rANS schemes share: the ``lanes`` parameter, its section layout, rows of at most 2^31."""

    id: str
    max_row_length = MAX_ROW_LENGTH  # rANS needs every probability >= 2^-31

    def check_params(self, params, rows: int, n: int, where: str) -> None:
        check_lanes_params(self.id, params, rows, n, where)

    def check_layout(self, params: dict, rows: int, n: int, section: bytes, what: str) -> None:
        check_lanes_layout(params, rows, n, section, what)


def lanes_for(bound_bits: float, rows: int, level: "Level") -> int:
    """How many rANS lanes: one per ``level.bits_per_lane`` information bits, at least 1, at most one a row."""
    return max(1, min(rows, int(bound_bits // level.bits_per_lane)))
