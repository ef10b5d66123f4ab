"""Scheme ``delta`` (specs/format.md Section 8): zigzag(trained rank - initial rank) per element, byte planes, zstd.

Small when training moved few values far (lightly trained models); decoding
sorts the initial rows once to turn ranks back into positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import arrays, backend
from ...errors import FormatError
from .. import indexcode, zstdframe
from .base import RowsToEncode

if TYPE_CHECKING:
    import torch

    from .levels import Level


def index_width(row_length: int) -> int:
    """Bytes per zigzag code of a row of this length: codes lie in [0, 2 (n - 1)]."""
    return indexcode.byte_width(2 * max(row_length - 1, 0))


def encode_delta(codes: np.ndarray, row_length: int, zstd_level: int) -> bytes:
    """The zigzag codes (``RowsToEncode.delta_codes``) as byte planes, in one zstd frame."""
    return zstdframe.compress(indexcode.to_byte_planes(codes, index_width(row_length)), zstd_level)


def entropy_bits(codes: np.ndarray) -> float:
    """The order-0 entropy of the codes, in bits for all of them: a cheap estimate of delta's size."""
    counts = np.bincount(codes.astype(np.int64, copy=False))  # numpy 1.x bincounts no uint64; codes < 2^63
    counts = counts[counts > 0]
    return float((counts * np.log2(codes.size / counts)).sum()) if codes.size else 0.0


def byte_planes(section: bytes, rows: int, n: int, what: str) -> tuple[bytes, int]:
    """(payload, width): the byte planes of a section for ``rows`` rows of ``n``, inflated from its zstd frame,
    which must hold exactly rows * n codes of ``index_width(n)`` bytes."""
    width = index_width(n)
    return zstdframe.decompress_exact(section, rows * n * width, what), width


def decode_delta(initial: "torch.Tensor", section: bytes, what: str) -> "torch.Tensor":
    rows, n = initial.shape
    payload, width = byte_planes(section, rows, n, what)
    if rows * n == 0:
        return initial
    xp = arrays.of(initial)
    if xp is arrays.NUMPY and backend.chosen() == "numba":
        return decode_compiled(initial, payload, width, what)
    from ...perm import SortedRows

    deltas = indexcode.unzigzag(indexcode.from_byte_planes(payload, rows * n, width))
    sorted_initial = SortedRows.of(initial)
    final_ranks = sorted_initial.ranks + xp.from_numpy(deltas).reshape(rows, n)
    check_ranks(final_ranks, what)
    return xp.take_rows(initial, xp.take_rows(sorted_initial.order, final_ranks))


def decode_compiled(initial: np.ndarray, payload: bytes, width: int, what: str) -> np.ndarray:
    """The array path's result and errors, in one compiled pass per row after numpy's sort of the initial rows."""
    from .. import _delta_numba

    planes = np.frombuffer(payload, dtype=np.uint8)
    keys, has_nan = _delta_numba.sort_keys(initial) if initial.shape[1] < 2 ** 32 else (None, True)
    if has_nan:  # numpy's stable argsort puts every NaN last; the order-preserving keys would not
        keys = arrays.NUMPY.argsort_rows(initial).astype(np.uint64)
    else:
        keys = arrays.NUMPY.sort_rows(keys)
    out, status = _delta_numba.place_rows(planes, width, initial, keys)
    if (status == _delta_numba.OUT_OF_RANGE).any():
        raise ranks_outside(what, initial.shape[1])
    if status.any():
        raise ranks_not_a_permutation(what, int(np.flatnonzero(status)[0]))
    return out


def check_ranks(ranks: "torch.Tensor", what: str) -> None:
    """Each row must hold every rank 0 .. n-1 exactly once."""
    rows, n = ranks.shape
    if rows * n == 0:
        return
    if int(ranks.min()) < 0 or int(ranks.max()) >= n:
        raise ranks_outside(what, n)
    xp = arrays.of(ranks)
    seen = xp.all_rows(xp.put_rows_into(xp.zeros((rows, n), xp.bool), ranks, True))
    if not bool(seen.all()):
        raise ranks_not_a_permutation(what, int(np.flatnonzero(~xp.to_numpy(seen))[0]))


def ranks_outside(what: str, n: int) -> FormatError:
    return FormatError(f"{what}: decoded ranks fall outside [0, {n})")


def ranks_not_a_permutation(what: str, row: int) -> FormatError:
    return FormatError(f"{what}: decoded ranks of row {row} are not a permutation")


class Delta:
    id = "delta"
    max_row_length = None

    def check_params(self, params, rows: int, n: int, where: str) -> None:
        if params != {}:
            raise FormatError(f"{where}: scheme 'delta' takes no parameters, found {params!r}")

    def check_layout(self, params: dict, rows: int, n: int, section: bytes, what: str) -> None:
        """The frame's declared size; a tensor without elements is checked completely here."""
        if rows * n == 0:
            zstdframe.decompress_exact(section, 0, what)
        else:
            zstdframe.check_frame_size(section, rows * n * index_width(n), what)

    def encode(self, tensor: RowsToEncode, level: "Level") -> tuple[dict, bytes]:
        return {}, encode_delta(tensor.delta_codes, tensor.initial.rows.shape[1], level.zstd_level)

    def can_win(self, tensor: RowsToEncode, level: "Level", best_bytes: int) -> bool:
        """Whether delta can be smaller than ``best_bytes``: zstd has not come below 0.97 x the order-0 entropy
        of the codes in any trained or random model measured (0.45 x only for shared pools, whose entropy is
        12 x their multiset section), so a level's ``delta_floor`` (0.9 at default) of it is a safe floor."""
        return level.delta_floor is None or level.delta_floor * entropy_bits(tensor.delta_codes) < 8 * best_bytes

    def decode(self, params: dict, initial: "torch.Tensor", section: bytes, what: str) -> "torch.Tensor":
        return decode_delta(initial, section, what)


DELTA = Delta()
