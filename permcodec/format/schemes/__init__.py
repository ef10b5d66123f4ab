"""The table of index schemes and raw codecs, and the encoder's choice among them.

Index schemes code a permuted tensor's rows against its initial rows
(specs/format.md Sections 8-11); raw codecs store any other tensor (Section 13).
Each is a small object in its own file (``base`` says what one is), found here
by the id its records store:

- ``delta``: zigzag(trained rank - initial rank), byte planes, zstd;
- ``exact``: the permutation as swap-code digits, log2(n!) bits per row;
- ``multiset``: the class at each position, log2(n!/prod m_v!) per row;
- ``sparse``: the zeros as one class, the other elements by the swap code, log2(n!/z!) per row;
- ``shuffle-zstd``: the raw codec.

A ``Level`` decides which schemes the encoder tries and how hard; it keeps the
smallest section. Every scheme decodes at any level.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...errors import SpecError
from .base import IndexScheme, RawCodec, RowsToEncode
from .delta import DELTA, index_width  # noqa: F401 (index_width: the delta section's size, for tools)
from .exact import EXACT
from .levels import DEFAULT_LEVEL, LEVELS, Level, level_named  # noqa: F401 (the encoder's API)
from .multiset import MULTISET
from .shuffle_zstd import SHUFFLE_ZSTD
from .sparse import SPARSE

if TYPE_CHECKING:
    from ...perm import SortedRows

INDEX_SCHEMES: dict[str, IndexScheme] = {scheme.id: scheme for scheme in (DELTA, EXACT, MULTISET, SPARSE)}
RAW_CODECS: dict[str, RawCodec] = {codec.id: codec for codec in (SHUFFLE_ZSTD,)}
SCHEMES = tuple(INDEX_SCHEMES)  # the ids, for --scheme and messages
RAW_CODEC = SHUFFLE_ZSTD        # what the encoder writes raw tensors with
SPARSE_EXCESS = 0.001           # sparse instead of multiset where its bound is at most this share larger


def index_scheme(scheme_id: str) -> IndexScheme:
    """The scheme of a (checked) record's ``scheme`` field, or one a caller names; SpecError if unknown."""
    if not isinstance(scheme_id, str) or scheme_id not in INDEX_SCHEMES:
        raise SpecError(f"unknown scheme {scheme_id!r}; choose one of {', '.join(SCHEMES)}")
    return INDEX_SCHEMES[scheme_id]


def schemes_to_try(level: Level, multiset_gain: float, sparse_excess: float) -> list[IndexScheme]:
    """In order of preference. The repeated-values schemes save only the bits of repeated values over exact,
    so one is tried only where that saving reaches the level's share: sparse where its bound is within
    SPARSE_EXCESS of multiset's (its decoder needs no sort and no search), else multiset."""
    repeated = SPARSE if sparse_excess <= SPARSE_EXCESS else MULTISET
    arrangement = [EXACT, repeated] if multiset_gain > level.multiset_gain else [EXACT]
    if not level.try_delta:
        return arrangement[-1:]
    return arrangement + [DELTA]


def fits(scheme: IndexScheme, row_length: int) -> bool:
    return scheme.max_row_length is None or row_length <= scheme.max_row_length


def encode_best(trained: "SortedRows", initial: "SortedRows", level: Level,
                only: str | None = None) -> tuple[str, dict, bytes]:
    """(scheme id, scheme_params, section) of the smallest scheme ``level`` tries, or of scheme ``only``."""
    tensor = RowsToEncode(trained, initial)
    n = initial.rows.shape[1]
    if only is not None:
        wanted = [index_scheme(only)]
        if not fits(wanted[0], n):
            raise SpecError(f"scheme {only!r} needs rows of at most 2^31 elements, found {n}")
    else:
        wanted = [scheme for scheme in schemes_to_try(level, multiset_gain(tensor), sparse_excess(tensor))
                  if fits(scheme, n)]
        wanted = wanted or [scheme for scheme in INDEX_SCHEMES.values() if fits(scheme, n)]
    found = [(scheme.id, *scheme.encode(tensor, level)) for scheme in wanted if scheme is not DELTA]
    if DELTA in wanted and (not found or DELTA.can_win(tensor, level, min(len(item[2]) for item in found))):
        found.append((DELTA.id, *DELTA.encode(tensor, level)))
    return min(found, key=lambda item: len(item[2]))


def multiset_gain(tensor: RowsToEncode) -> float:
    """The share of exact's bits that repeated values save; 0.0 exactly without repeated values."""
    exact_bits = tensor.exact_bits
    return 1.0 - tensor.multiset_bits / exact_bits if exact_bits else 0.0


def sparse_excess(tensor: RowsToEncode) -> float:
    """How much larger sparse's bound is than multiset's, as a share of multiset's (0.0 where both are 0)."""
    multiset_bits, sparse_bits = tensor.multiset_bits, tensor.sparse_bits
    if not multiset_bits:  # every row one class: sparse codes nothing only where that class is the zeros
        return 0.0 if not sparse_bits else math.inf
    return sparse_bits / multiset_bits - 1.0
