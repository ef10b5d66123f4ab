"""Arrangement coding with rANS: a row's order near log2(n!/prod m!) bits, decoded lane-parallel.

Three models share one coder:

- **digits** (scheme "exact"): position ``p`` of a row of ``n`` carries a digit
  ``d_p`` uniform in ``[0, n - p)``. A permutation becomes digits by the swap
  (Fisher-Yates) code: start from the identity, and at position ``p`` swap in
  the wanted element from ``p + d_p``. Decoding is one swap per position, no
  search; a row costs log2(n!) bits.
- **arrangement** (scheme "multiset"): position ``p`` carries the class of its
  value, coded with probability ``left[c] / Q`` (``Q = n - p``): a row costs
  log2(n! / prod m_c!) bits.
- **sparse** (scheme "sparse"): a row's zeros are one class above its other
  elements (items), which take swap-code digits among the items left: with k
  items and z zeros left, an item digit d has [d, d + 1), a zero [k, k + z).
  A row of z zeros costs log2(n! / z!) bits, decoded with no sort or search.

A symbol of probability ``[C, C + m) / Q`` is quantized to ``M = 2^31`` as
``start = floor(C * M / Q)``, ``freq = floor((C + m) * M / Q) - start``: exact,
monotone, summing to ``M`` without redistribution. Positions with a single
choice left are not coded. Rows are split into lanes: lane ``j`` codes rows
``j, j + lanes, ...`` into its own 64-bit-state rANS stream of 32-bit words.
The section is ``u32 word_count[lanes]`` then every lane's words, little-endian.
See specs/format.md, Sections 9-11a.

Two backends give identical words: numba kernels (parallel over lanes and
rows) when numba is importable, and numpy vectorized across lanes and rows
otherwise. Nothing here knows about tensors or files.
"""

from __future__ import annotations

import struct

import numpy as np

from .. import backend
from ..errors import FormatError
from .ransmath import MAX_ROW_LENGTH, PROB_BITS, STATE_LOW, quantized  # noqa: F401 (re-exported)

BACKENDS = backend.AVAILABLE


def kernels(backend_name: str | None = None):
    """``_rans_numba`` or ``_rans_numpy``: the same functions, identical words."""
    return backend.kernels(__package__, "_rans_numba", "_rans_numpy", backend_name)


def default_backend() -> str:
    return backend.chosen()


# ---------------------------------------------------------------- public API

def encode_permutations(pi: np.ndarray, lanes: int, backend: str | None = None) -> bytes:
    """Scheme exact: code each row of ``pi`` (int [rows, n], a permutation of 0 .. n-1 per row)."""
    pi = np.ascontiguousarray(pi, dtype=np.int64)
    if pi.shape[0] == 0 or pi.shape[1] <= 1:
        return nothing_coded_section(lanes)
    return encode_digits(kernels(backend).permutation_digits(pi), lanes, backend)


def decode_permutations(section: bytes, rows: int, n: int, lanes: int, what: str,
                        backend: str | None = None) -> np.ndarray:
    """The int64 [rows, n] permutations coded in ``section``; FormatError if it is not a valid coding."""
    if rows == 0 or n <= 1:  # no arange of a row length that no row has
        check_nothing_coded(section, lanes, what)
        return np.zeros((rows, n), dtype=np.int64)
    identity = np.broadcast_to(np.arange(n, dtype=np.int64), (rows, n))
    return decode_onto(section, identity, lanes, what, backend)


def decode_onto(section: bytes, values: np.ndarray, lanes: int, what: str, backend: str | None = None) -> np.ndarray:
    """Each row of ``values`` [rows, n] (numpy) put in the order of the permutation coded in ``section``:
    out[r, j] = values[r, pi[r, j]], what ``decode_permutations`` and a gather give, in one pass. A writeable
    C-ordered ``values`` may be decoded in place: its contents are undefined afterwards."""
    return rows_in_coded_order("decode_onto", section, values, lanes, what, backend)


def rows_in_coded_order(kernel: str, section: bytes, values: np.ndarray, lanes: int, what: str,
                        backend: str | None = None) -> np.ndarray:
    """The backend's ``kernel(words, starts, ends, values, lanes)`` -> (out, status) on the checked lanes of
    ``section``; a tensor with nothing coded only has its lanes checked (and loads no kernel)."""
    rows, n = values.shape
    words, starts, ends = split_lanes(section, lanes, what)
    if rows == 0 or n <= 1:
        out, status = values.copy(), nothing_coded(words, starts, ends)
    else:
        out, status = getattr(kernels(backend), kernel)(words, starts, ends, values, lanes)
    check_status(status, what)
    return out


def encode_digits(digits: np.ndarray, lanes: int, backend: str | None = None) -> bytes:
    """Code digits [rows, n] with ``0 <= digits[r, p] < n - p`` (the last column is 0 and not coded)."""
    digits = np.ascontiguousarray(digits, dtype=np.int64)
    rows, n = digits.shape
    assert 1 <= lanes <= max(rows, 1) and n <= MAX_ROW_LENGTH
    if rows == 0 or n <= 1:
        return nothing_coded_section(lanes)
    left = n - np.arange(n, dtype=np.int64)
    start = quantized(digits, left)
    freq = np.where(left > 1, quantized(digits + 1, left) - start, 0)
    return encode_intervals(start, freq, lanes, backend)


def encode_arrangement(symbols: np.ndarray, counts: np.ndarray, lanes: int, backend: str | None = None) -> bytes:
    """Scheme multiset: code ``symbols`` (int [rows, n], the class at each position) given each row's
    class ``counts`` (int [rows, K], summing to n, zero-padded on the right)."""
    symbols = np.ascontiguousarray(symbols, dtype=np.int64)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    rows, n = symbols.shape
    assert 1 <= lanes <= max(rows, 1) and n <= MAX_ROW_LENGTH
    if rows == 0 or n <= 1:
        return nothing_coded_section(lanes)
    start, freq = kernels(backend).arrangement_intervals(symbols, counts)
    return encode_intervals(start, freq, lanes, backend)


def decode_arrangement(section: bytes, counts: np.ndarray, rows: int, n: int, lanes: int, what: str,
                       backend: str | None = None) -> np.ndarray:
    """The int64 [rows, n] class symbols coded in ``section``; FormatError if it is not a valid coding."""
    words, starts, ends = split_lanes(section, lanes, what)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if rows == 0 or n <= 1:
        symbols, status = single_class(counts, n), nothing_coded(words, starts, ends)
    else:
        symbols, status = kernels(backend).decode_arrangement(words, starts, ends, counts, n, lanes)
    check_status(status, what)
    return symbols


def decode_classes_onto(section: bytes, pool_sorted: np.ndarray, lanes: int, what: str) -> np.ndarray:
    """Scheme multiset on the CPU with numba: out[r, p] = the value of the class decoded at (r, p), the classes
    being the distinct values of ``pool_sorted[r]`` (float32, ascending): ``decode_arrangement`` with the
    counts of ``PoolClasses`` and the gather of its values, in one compiled pass per row."""
    words, starts, ends = split_lanes(section, lanes, what)
    out, status = kernels("numba").decode_classes_onto(words, starts, ends, pool_sorted, lanes)
    check_status(status, what)
    return out


def encode_sparse(items: np.ndarray, lanes: int, backend: str | None = None) -> bytes:
    """Scheme sparse: code ``items`` (int [rows, n]: at each position the index of its item among the row's
    nonzero initial elements in position order, or -1 for a zero)."""
    items = np.ascontiguousarray(items, dtype=np.int64)
    rows, n = items.shape
    assert 1 <= lanes <= max(rows, 1) and n <= MAX_ROW_LENGTH
    if rows == 0 or n <= 1:
        return nothing_coded_section(lanes)
    start, freq = sparse_intervals(items, backend)
    return encode_intervals(start, freq, lanes, backend)


def sparse_intervals(items: np.ndarray, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(start, freq) [rows, n] of scheme sparse's symbols: an item's swap-code digit among the items left
    (C = d, m = 1), or the zero class above them (C = items left, m = zeros left); freq 0: not coded."""
    rows, n = items.shape
    is_item = items >= 0
    count = is_item.sum(axis=1)
    longest = int(count.max())
    # each row's item permutation, padded to the longest by fixed points, which cost digits of 0
    order = np.tile(np.arange(longest, dtype=np.int64), (rows, 1))
    order[np.arange(longest) < count[:, None]] = items[is_item]
    digits = np.zeros((rows, n), dtype=np.int64)
    if longest:
        digits[is_item] = kernels(backend).permutation_digits(order)[np.arange(longest) < count[:, None]]
    items_left = count[:, None] - (np.cumsum(is_item, axis=1) - is_item)
    left = n - np.arange(n, dtype=np.int64)
    zeros_left = left - items_left
    cum = np.where(is_item, digits, items_left)
    width = np.where(is_item, 1, zeros_left)
    start = quantized(cum, left)
    return start, np.where(width < left, quantized(cum + width, left) - start, 0)


def decode_sparse_onto(section: bytes, values: np.ndarray, lanes: int, what: str,
                       backend: str | None = None) -> np.ndarray:
    """Scheme sparse: each row of ``values`` [rows, n] (numpy, 4-byte elements, a zero being all zero bits)
    in the order coded in ``section``. A writeable C-ordered ``values`` may be decoded in place."""
    return rows_in_coded_order("decode_sparse_onto", section, values, lanes, what, backend)


def encode_intervals(start: np.ndarray, freq: np.ndarray, lanes: int, backend: str | None = None) -> bytes:
    """The section of symbols given their (start, freq) [rows, n]; freq 0 marks a position not coded."""
    lane_words = kernels(backend).encode_lanes(start, freq, lanes)
    lengths = np.array([len(words) for words in lane_words], dtype="<u4")
    return lengths.tobytes() + b"".join(words.astype("<u4").tobytes() for words in lane_words)


def check_status(status: np.ndarray, what: str) -> None:
    if np.count_nonzero(status):
        lane = int(np.flatnonzero(status)[0])
        raise FormatError(f"{what}: lane {lane} {LANE_ERRORS[int(status[lane])]}")


def single_class(counts: np.ndarray, n: int) -> np.ndarray:
    """Symbols of rows with at most one position: the first class that occurs."""
    rows = counts.shape[0]
    if n == 0 or rows == 0:
        return np.zeros((rows, n), dtype=np.int64)
    return np.argmax(counts > 0, axis=1).astype(np.int64).reshape(rows, 1)


LANE_ERRORS = {
    1: "starts with a state below 2^32",
    2: "runs out of words before its last row",
    3: "does not end in the initial state 2^32 with every word used (corrupt coding)",
}


def nothing_coded_section(lanes: int) -> bytes:
    """The section of a tensor with no coded position: every lane holds only the state L."""
    lane = np.array([STATE_LOW >> 32, STATE_LOW & 0xFFFFFFFF], dtype="<u4").tobytes()
    return np.full(lanes, 2, dtype="<u4").tobytes() + lane * lanes


def check_nothing_coded(section: bytes, lanes: int, what: str) -> None:
    """FormatError unless every lane of ``section`` is exactly the state L (a tensor with nothing coded)."""
    words, starts, ends = split_lanes(section, lanes, what)
    check_status(nothing_coded(words, starts, ends), what)


def nothing_coded(words: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lane status when no position is coded: each lane must be exactly the state L, without walking rows."""
    from . import (
        _rans_numpy,  # these checks are numpy whatever the backend: no row is walked
    )

    state, status, pointer = _rans_numpy.initial_states(words, starts)
    return _rans_numpy.final_status(state, pointer, ends, status)


def lane_lengths(section: bytes, lanes: int, what: str) -> tuple[int, ...]:
    """Each lane's word count, once every length is checked against the section. Plain Python: a tensor's
    lane count is small, and a numpy call on a few numbers costs more than the loop (the section is bounded
    before its lengths are read, so ``lanes`` is too)."""
    if len(section) < 4 * lanes or len(section) % 4:
        raise FormatError(f"{what}: section of {len(section)} bytes cannot hold {lanes} lane lengths and "
                          f"whole 32-bit words")
    lengths = struct.unpack_from(f"<{lanes}I", section)
    words = len(section) // 4 - lanes
    if sum(lengths) != words:
        raise FormatError(f"{what}: lane lengths add up to {sum(lengths)} words, the section holds {words}")
    if lanes and min(lengths) < 2:
        raise FormatError(f"{what}: lane {lengths.index(min(lengths))} has {min(lengths)} words, "
                          f"at least 2 (its final state) are needed")
    return lengths


def split_lanes(section: bytes, lanes: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The words of a section (uint32, read in place where the host is little-endian), and each lane's
    [start, end) word offsets; checks every length."""
    lengths = np.array(lane_lengths(section, lanes, what), dtype=np.int64)
    ends = lengths.cumsum()
    words = np.frombuffer(section, dtype="<u4", offset=4 * lanes)
    return words if words.dtype.isnative else words.astype(np.uint32), ends - lengths, ends
