"""Index schemes: how the rows of a permuted tensor are coded against its regenerated initial rows.

- ``delta``: zigzag(trained rank - initial rank) per element, byte planes, zstd.
  Small when training moved few values far (lightly trained models).
- ``exact``: the permutation pi with trained[j] = initial[pi[j]], as swap-code
  digits (``rans``): log2(n!) bits per row plus rounding. The decoder needs no
  sort and no search: one swap per position.
- ``multiset``: the class (distinct value, ascending) at each position,
  arrangement-coded with the pool's multiplicities: log2(n!/prod m_v!) per row,
  far below log2(n!) for sparse and shared-value pools.

A ``Level`` decides which schemes the encoder tries and how hard; it keeps the
smallest section. Every scheme decodes at any level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import perm
from ..errors import FormatError, SpecError
from . import indexcode, rans
from .container import DELTA, EXACT, MULTISET, SCHEMES  # noqa: F401 (the ids are the format's; re-exported)


@dataclass(frozen=True)
class Level:
    """How hard the encoder works on a tensor."""

    name: str
    zstd_level: int      # zstd level of delta sections and raw tensors
    bits_per_lane: int   # information bits per rANS lane: more lanes decode more in parallel, each costs ~16 bytes
    try_delta: bool      # whether delta competes with the arrangement schemes
    multiset_gain: float  # try multiset where repeated values save more than this share of exact's bits
    summary: str         # one line for --help and the spec


LEVELS = {
    "fast": Level("fast", 3, 1 << 12, False, 0.01,
                  "exact only (multiset instead where repeated values save more than 1%), many rANS lanes: "
                  "3-5x faster encode, files up to 2% larger"),
    "default": Level("default", 19, 1 << 16, True, 0.01,
                     "exact, delta at zstd 19, and multiset where repeated values save more than 1%; keeps the "
                     "smallest: within 0.2% of the bound, the level to use"),
    "max": Level("max", 22, 1 << 20, True, 0.0,
                 "as default, but multiset wherever values repeat, zstd 22 and few lanes: about 0.1% smaller, "
                 "and up to 4x slower to decode where it picks multiset for so little"),
}
DEFAULT_LEVEL = "default"


def level_named(name) -> Level:
    if isinstance(name, Level):
        return name
    if name not in LEVELS:
        raise SpecError(f"unknown level {name!r}; choose one of {', '.join(LEVELS)}")
    return LEVELS[name]


# ---------------------------------------------------------------- pool classes

@dataclass(frozen=True)
class PoolClasses:
    """The distinct values of each sorted row ("classes", ascending) and how often each occurs."""

    of_sorted: torch.Tensor   # int64 [rows, n]: class of each sorted position
    counts: torch.Tensor      # int64 [rows, K]: occurrences per class, zero-padded to the largest K

    @classmethod
    def of(cls, pool_sorted: torch.Tensor) -> "PoolClasses":
        rows, n = pool_sorted.shape
        of_sorted = torch.cumsum(perm.class_starts(pool_sorted).to(torch.int64), dim=1) - 1
        k = int(of_sorted[:, -1].max()) + 1 if rows and n else 0
        counts = torch.zeros(rows, k, dtype=torch.int64, device=pool_sorted.device)
        counts.scatter_add_(1, of_sorted, torch.ones_like(of_sorted))
        return cls(of_sorted, counts)

    def values(self, pool_sorted: torch.Tensor) -> torch.Tensor:
        """float32 [rows, K]: the value of each class (0.0 in the padding)."""
        out = torch.zeros(self.counts.shape, dtype=pool_sorted.dtype, device=pool_sorted.device)
        return out.scatter_(1, self.of_sorted, pool_sorted)


def exact_bound_bits(rows: int, n: int) -> float:
    """rows * log2(n!): what exact codes, and what multiset saves on."""
    return rows * math.lgamma(n + 1) / math.log(2)


def lanes_for(bound_bits: float, rows: int, level: Level) -> int:
    return max(1, min(rows, int(bound_bits // level.bits_per_lane)))


# ---------------------------------------------------------------- encoding

def index_width(row_length: int) -> int:
    """Bytes per zigzag code of a row of this length: codes lie in [0, 2 (n - 1)]."""
    return indexcode.byte_width(2 * max(row_length - 1, 0))


def encode_delta(trained: perm.SortedRows, initial: perm.SortedRows, zstd_level: int) -> bytes:
    """zigzag(rank of trained row - rank of initial row), byte planes, zstd."""
    codes = indexcode.zigzag((trained.ranks - initial.ranks).reshape(-1).numpy())
    return indexcode.compress(indexcode.to_byte_planes(codes, index_width(initial.rows.shape[1])), zstd_level)


def encode_exact(trained: perm.SortedRows, initial: perm.SortedRows, lanes: int) -> bytes:
    """pi with trained[j] = initial[pi[j]]; ties map the k-th equal value to the k-th, in position order."""
    pi = torch.empty_like(trained.order).scatter_(1, trained.order, initial.order)
    return rans.encode_permutations(pi.numpy(), lanes)


def encode_multiset(trained: perm.SortedRows, classes: PoolClasses, lanes: int) -> bytes:
    symbols = torch.empty_like(trained.order).scatter_(1, trained.order, classes.of_sorted)
    return rans.encode_arrangement(symbols.numpy(), classes.counts.numpy(), lanes)


def schemes_to_try(level: Level, multiset_gain: float) -> list[str]:
    """In order of preference. multiset saves only the bits of repeated values over exact, and its
    decoder must sort and search, so it is tried only where that saving reaches the level's share."""
    arrangement = [EXACT, MULTISET] if multiset_gain > level.multiset_gain else [EXACT]
    if not level.try_delta:
        return arrangement[-1:]
    return arrangement + [DELTA]


def encode_best(trained: perm.SortedRows, initial: perm.SortedRows, level: Level,
                only: str | None = None) -> tuple[str, dict, bytes]:
    """(scheme, scheme_params, section) of the smallest scheme ``level`` tries, or of scheme ``only``."""
    rows, n = initial.rows.shape
    pool = initial.pool()
    exact_bits = exact_bound_bits(rows, n)
    multiset_bits = perm.permutation_bound_bits(pool)
    gain = 1.0 - multiset_bits / exact_bits if exact_bits else 0.0  # 0.0 exactly without repeated values
    wanted = [only] if only else schemes_to_try(level, gain)
    if n > rans.MAX_ROW_LENGTH:  # rANS needs every probability >= 2^-31
        if only not in (None, DELTA):
            raise SpecError(f"scheme {only!r} needs rows of at most 2^31 elements, found {n}")
        wanted = [DELTA]
    found = []
    for scheme in wanted:
        if scheme == DELTA:
            found.append((DELTA, {}, encode_delta(trained, initial, level.zstd_level)))
        elif scheme == EXACT:
            lanes = lanes_for(exact_bits, rows, level)
            found.append((EXACT, {"lanes": lanes}, encode_exact(trained, initial, lanes)))
        else:
            lanes = lanes_for(multiset_bits, rows, level)
            found.append((MULTISET, {"lanes": lanes}, encode_multiset(trained, PoolClasses.of(pool), lanes)))
    return min(found, key=lambda item: len(item[2]))


# ---------------------------------------------------------------- decoding

def check_layout(scheme: str, params: dict, rows: int, n: int, section: bytes, what: str) -> None:
    """The checks of a section that need no regenerated pool, done before any is regenerated.

    A tensor without elements is checked completely here (and nothing is sized
    by its shape); otherwise the frame's declared size (delta) or the lanes'
    word counts (exact, multiset) are checked, so a malformed section is
    refused in microseconds rather than after its pool is drawn.
    """
    if scheme == DELTA:
        if rows * n == 0:
            indexcode.decompress_exact(section, 0, what)
        else:
            indexcode.check_frame_size(section, rows * n * index_width(n), what)
    elif rows * n == 0:
        rans.check_nothing_coded(section, params["lanes"], what)
    else:
        rans.split_lanes(section, params["lanes"], what)


def decode(scheme: str, params: dict, initial: torch.Tensor, section: bytes, what: str) -> torch.Tensor:
    """The trained rows [rows, n] from the initial rows (on the target device) and the section.

    ``scheme`` and ``params`` were checked with the header (``container.check_scheme_params``).
    """
    rows, n = initial.shape
    if scheme == DELTA:
        return decode_delta(initial, section, what)
    if scheme == EXACT:
        pi = rans.decode_permutations(section, rows, n, params["lanes"], what)
        return torch.gather(initial, 1, torch.from_numpy(pi).to(initial.device))
    pool = torch.sort(initial, dim=1).values
    classes = PoolClasses.of(pool)
    symbols = rans.decode_arrangement(section, classes.counts.cpu().numpy(), rows, n, params["lanes"], what)
    return torch.gather(classes.values(pool), 1, torch.from_numpy(symbols).to(initial.device))


def decode_delta(initial: torch.Tensor, section: bytes, what: str) -> torch.Tensor:
    rows, n = initial.shape
    width = index_width(n)
    payload = indexcode.decompress_exact(section, rows * n * width, what)
    if rows * n == 0:
        return initial
    deltas = indexcode.unzigzag(indexcode.from_byte_planes(payload, rows * n, width))
    sorted_initial = perm.SortedRows.of(initial)
    final_ranks = sorted_initial.ranks + torch.from_numpy(deltas).to(initial.device).reshape(rows, n)
    check_ranks(final_ranks, what)
    return torch.gather(initial, 1, torch.gather(sorted_initial.order, 1, final_ranks))


def check_ranks(ranks: torch.Tensor, what: str) -> None:
    """Each row must hold every rank 0 .. n-1 exactly once."""
    rows, n = ranks.shape
    if ranks.numel() == 0:
        return
    if int(ranks.min()) < 0 or int(ranks.max()) >= n:
        raise FormatError(f"{what}: decoded ranks fall outside [0, {n})")
    seen = torch.zeros(rows, n, dtype=torch.bool, device=ranks.device).scatter_(1, ranks, True)
    if not bool(seen.all()):
        bad = int((~seen.all(dim=1)).nonzero()[0])
        raise FormatError(f"{what}: decoded ranks of row {bad} are not a permutation")

