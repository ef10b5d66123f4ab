"""Arrangement coding with rANS: a row's order near log2(n!/prod m!) bits, decoded lane-parallel.

Two models share one coder:

- **digits** (scheme "exact"): position ``p`` of a row of ``n`` carries a digit
  ``d_p`` uniform in ``[0, n - p)``. A permutation becomes digits by the swap
  (Fisher-Yates) code: start from the identity, and at position ``p`` swap in
  the wanted element from ``p + d_p``. Decoding is one swap per position, no
  search; a row costs log2(n!) bits.
- **arrangement** (scheme "multiset"): position ``p`` carries the class of its
  value, coded with probability ``left[c] / Q`` (``Q = n - p``): a row costs
  log2(n! / prod m_c!) bits.

A symbol of probability ``[C, C + m) / Q`` is quantized to ``M = 2^31`` as
``start = floor(C * M / Q)``, ``freq = floor((C + m) * M / Q) - start``: exact,
monotone, summing to ``M`` without redistribution. Positions with a single
choice left are not coded. Rows are split into lanes: lane ``j`` codes rows
``j, j + lanes, ...`` into its own 64-bit-state rANS stream of 32-bit words.
The section is ``u32 word_count[lanes]`` then every lane's words, little-endian.
See specs/format.md, Sections 9-11.

Two backends give identical words: numba kernels (parallel over lanes and
rows) when numba is importable, and numpy vectorized across lanes and rows
otherwise. Nothing here knows about tensors or files.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import FormatError, SpecError

PROB_BITS = 31
PROB_SCALE = 1 << PROB_BITS        # M: quantized probabilities sum to this
STATE_LOW = 1 << 32                # L: states live in [L, 2^64)
WORD_BITS = 32
MAX_ROW_LENGTH = PROB_SCALE        # every freq stays >= 1 while Q <= M

try:  # numba compiles the integer kernels; absent, the numpy backend gives the same words
    import numba
except ImportError:  # pragma: no cover - exercised on machines without numba
    numba = None

BACKENDS = ("numba", "numpy") if numba is not None else ("numpy",)


def default_backend() -> str:
    """numba when available, unless PERMCODEC_BACKEND=numpy asks for the pure fallback."""
    wanted = os.environ.get("PERMCODEC_BACKEND", BACKENDS[0])
    if wanted not in ("numba", "numpy"):
        raise SpecError(f"PERMCODEC_BACKEND must be 'numba' or 'numpy', found {wanted!r}")
    return wanted if wanted in BACKENDS else BACKENDS[0]


def check_backend(backend: str | None) -> str:
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not available here; available: {', '.join(BACKENDS)}")
    return backend


# ---------------------------------------------------------------- public API

def encode_permutations(pi: np.ndarray, lanes: int, backend: str | None = None) -> bytes:
    """Scheme exact: code each row of ``pi`` (int [rows, n], a permutation of 0 .. n-1 per row)."""
    pi = np.ascontiguousarray(pi, dtype=np.int64)
    if pi.shape[0] == 0 or pi.shape[1] <= 1:
        return nothing_coded_section(lanes)
    if check_backend(backend) == "numba":
        digits = _numba_kernels().permutation_digits(pi)
    else:
        digits = _permutation_digits_numpy(pi)
    return encode_digits(digits, lanes, backend)


def decode_permutations(section: bytes, rows: int, n: int, lanes: int, what: str,
                        backend: str | None = None) -> np.ndarray:
    """The int64 [rows, n] permutations coded in ``section``; FormatError if it is not a valid coding."""
    digits = decode_digits(section, rows, n, lanes, what, backend)
    if rows == 0 or n <= 1:
        return digits  # zeros: the only permutation of one element, or nothing at all
    if check_backend(backend) == "numba":
        return _numba_kernels().permutations_of(digits)
    return _permutations_of_numpy(digits)


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
    return encode_model(start, freq, lanes, backend)


def decode_digits(section: bytes, rows: int, n: int, lanes: int, what: str,
                  backend: str | None = None) -> np.ndarray:
    words, starts, ends = split_lanes(section, lanes, what)
    if rows == 0 or n <= 1:
        digits, status = np.zeros((rows, n), dtype=np.int64), nothing_coded(words, starts, ends)
    elif check_backend(backend) == "numba":
        digits, status = _numba_kernels().decode_digits(words, starts, ends, rows, n, lanes)
    else:
        digits, status = _decode_digits_numpy(words, starts, ends, rows, n, lanes)
    check_status(status, what)
    return digits


def encode_arrangement(symbols: np.ndarray, counts: np.ndarray, lanes: int, backend: str | None = None) -> bytes:
    """Scheme multiset: code ``symbols`` (int [rows, n], the class at each position) given each row's
    class ``counts`` (int [rows, K], summing to n, zero-padded on the right)."""
    symbols = np.ascontiguousarray(symbols, dtype=np.int64)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    rows, n = symbols.shape
    assert 1 <= lanes <= max(rows, 1) and n <= MAX_ROW_LENGTH
    if rows == 0 or n <= 1:
        return nothing_coded_section(lanes)
    if check_backend(backend) == "numba":
        start, freq = _numba_kernels().arrangement_model(symbols, counts)
    else:
        start, freq = _arrangement_model_numpy(symbols, counts)
    return encode_model(start, freq, lanes, backend)


def decode_arrangement(section: bytes, counts: np.ndarray, rows: int, n: int, lanes: int, what: str,
                       backend: str | None = None) -> np.ndarray:
    """The int64 [rows, n] class symbols coded in ``section``; FormatError if it is not a valid coding."""
    words, starts, ends = split_lanes(section, lanes, what)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if rows == 0 or n <= 1:
        symbols, status = single_class(counts, n), nothing_coded(words, starts, ends)
    elif check_backend(backend) == "numba":
        symbols, status = _numba_kernels().decode_arrangement(words, starts, ends, counts, n, lanes)
    else:
        symbols, status = _decode_arrangement_numpy(words, starts, ends, counts, n, lanes)
    check_status(status, what)
    return symbols


def encode_model(start: np.ndarray, freq: np.ndarray, lanes: int, backend: str | None = None) -> bytes:
    """The section of symbols given their (start, freq) [rows, n]; freq 0 marks a position not coded."""
    if check_backend(backend) == "numba":
        lane_words = _numba_kernels().encode_lanes(start, freq, lanes)
    else:
        lane_words = _encode_lanes_numpy(start, freq, lanes)
    lengths = np.array([len(words) for words in lane_words], dtype="<u4")
    return lengths.tobytes() + b"".join(words.astype("<u4").tobytes() for words in lane_words)


def check_status(status: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(status)
    if bad.size:
        lane = int(bad[0])
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
    state, status, pointer = _initial_states(words, starts)
    return _final_status(state, pointer, ends, status)


def split_lanes(section: bytes, lanes: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The words of a section as uint64, and each lane's [start, end) word offsets; checks every length."""
    if len(section) < 4 * lanes or len(section) % 4:
        raise FormatError(f"{what}: section of {len(section)} bytes cannot hold {lanes} lane lengths and "
                          f"whole 32-bit words")
    lengths = np.frombuffer(section, dtype="<u4", count=lanes).astype(np.int64)
    words = np.frombuffer(section, dtype="<u4", offset=4 * lanes).astype(np.uint64)
    if int(lengths.sum()) != words.size:
        raise FormatError(f"{what}: lane lengths add up to {int(lengths.sum())} words, the section holds "
                          f"{words.size}")
    if lanes and int(lengths.min()) < 2:
        raise FormatError(f"{what}: lane {int(np.argmin(lengths))} has {int(lengths.min())} words, "
                          f"at least 2 (its final state) are needed")
    ends = np.cumsum(lengths)
    return words, ends - lengths, ends


def quantized(cum: np.ndarray, left: np.ndarray) -> np.ndarray:
    """floor(cum * M / Q), elementwise, exact in int64 (cum <= Q <= 2^31)."""
    return (cum << PROB_BITS) // left


# ---------------------------------------------------------------- numpy backend

def _permutation_digits_numpy(pi: np.ndarray) -> np.ndarray:
    """Swap code of each row, all rows at once: d_p = (where pi[p] sits now) - p, then swap it to p."""
    rows, n = pi.shape
    every = np.arange(rows)
    current = np.tile(np.arange(n, dtype=np.int64), (rows, 1))  # current[q]: the element at q
    where = current.copy()                                      # where[e]: the position of element e
    digits = np.zeros((rows, n), dtype=np.int64)
    for p in range(n):
        wanted = pi[:, p]
        at = where[every, wanted]
        digits[:, p] = at - p
        displaced = current[:, p].copy()
        current[every, at] = displaced
        where[every, displaced] = at
        current[:, p] = wanted
        where[every, wanted] = p
    return digits


def _permutations_of_numpy(digits: np.ndarray) -> np.ndarray:
    rows, n = digits.shape
    every = np.arange(rows)
    out = np.tile(np.arange(n, dtype=np.int64), (rows, 1))
    for p in range(n - 1):
        at = p + digits[:, p]
        moved = out[every, at]
        out[every, at] = out[:, p]
        out[:, p] = moved
    return out


def _fenwick_build(counts: np.ndarray) -> np.ndarray:
    """Fenwick trees [rows, K + 1] of int64 counts [rows, K], index 0 unused."""
    rows, k = counts.shape
    tree = np.zeros((rows, k + 1), dtype=np.int64)
    tree[:, 1:] = counts
    for i in range(1, k + 1):
        parent = i + (i & -i)
        if parent <= k:
            tree[:, parent] += tree[:, i]
    return tree


def _fenwick_prefix(tree: np.ndarray, lane: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sum of counts[0 .. index-1] per lane."""
    total = np.zeros(lane.size, dtype=np.int64)
    i = index.copy()
    while True:
        live = i > 0
        if not live.any():
            return total
        total[live] += tree[lane[live], i[live]]
        i[live] -= i[live] & -i[live]


def _fenwick_add(tree: np.ndarray, lane: np.ndarray, index: np.ndarray, delta: int) -> None:
    k = tree.shape[1] - 1
    i = index + 1
    while True:
        live = i <= k
        if not live.any():
            return
        tree[lane[live], i[live]] += delta
        i[live] += i[live] & -i[live]


def _fenwick_find(tree: np.ndarray, lane: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per lane: class c and C = counts[0 .. c-1] summed, with C <= target < C + counts[c]."""
    k = tree.shape[1] - 1
    pos = np.zeros(lane.size, dtype=np.int64)
    rest = target.copy()
    step = 1 << (k.bit_length() - 1) if k else 0
    while step:
        nxt = pos + step
        ok = nxt <= k
        value = np.zeros(lane.size, dtype=np.int64)
        value[ok] = tree[lane[ok], nxt[ok]]
        take = ok & (value <= rest)
        pos[take] = nxt[take]
        rest[take] -= value[take]
        step >>= 1
    return pos, target - rest


def _arrangement_model_numpy(symbols: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, freq) int64 [rows, n] of every position; freq 0 marks a position that is not coded."""
    rows, n = symbols.shape
    tree = _fenwick_build(counts)
    remaining = counts.copy()
    live = (counts > 0).sum(axis=1)
    every = np.arange(rows)
    start = np.zeros((rows, n), dtype=np.int64)
    freq = np.zeros((rows, n), dtype=np.int64)
    for p in range(n):
        c = symbols[:, p]
        coded = live > 1
        cum = _fenwick_prefix(tree, every, c)
        m = remaining[every, c]
        left = np.int64(n - p)
        lo = quantized(cum, left)
        start[:, p] = np.where(coded, lo, 0)
        freq[:, p] = np.where(coded, quantized(cum + m, left) - lo, 0)
        _fenwick_add(tree, every, c, -1)
        remaining[every, c] -= 1
        live -= remaining[every, c] == 0
    return start, freq


def _encode_lanes_numpy(start: np.ndarray, freq: np.ndarray, lanes: int) -> list[np.ndarray]:
    rows, n = start.shape
    state = np.full(lanes, STATE_LOW, dtype=np.uint64)
    emitted: list[list[int]] = [[] for _ in range(lanes)]
    for block in reversed(range(-(-rows // lanes))):
        row_ids = np.arange(block * lanes, min(rows, (block + 1) * lanes))
        lane = row_ids - block * lanes
        for p in reversed(range(n)):
            f = freq[row_ids, p].astype(np.uint64)
            coded = f > 0
            x = state[lane]
            spill = coded & (x >= (f << np.uint64(33)))
            for j in lane[spill]:
                emitted[j].append(int(state[j]) & 0xFFFFFFFF)
            x = np.where(spill, x >> np.uint64(WORD_BITS), x)
            safe_f = np.where(coded, f, np.uint64(1))
            encoded = ((x // safe_f) << np.uint64(PROB_BITS)) + (x % safe_f) + start[row_ids, p].astype(np.uint64)
            state[lane] = np.where(coded, encoded, x)
    out = []
    for j in range(lanes):
        x = int(state[j])
        out.append(np.array((emitted[j] + [x & 0xFFFFFFFF, x >> 32])[::-1], dtype=np.uint64))
    return out


def _read_words(x, need, lane, pointer, ends, words, status):
    """Renormalize the lanes in ``need``: one word each, or status 2 where a lane has none left."""
    short = need & (pointer[lane] >= ends[lane])
    status[lane[short]] = 2
    need = need & ~short
    x[need] = (x[need] << np.uint64(32)) | words[pointer[lane[need]]]
    pointer[lane[need]] += 1
    return x


def _initial_states(words, starts):
    state = (words[starts] << np.uint64(32)) | words[starts + 1]
    status = np.where(state < np.uint64(STATE_LOW), 1, 0).astype(np.int64)
    return state, status, starts + 2


def _final_status(state, pointer, ends, status):
    status[(status == 0) & ((state != np.uint64(STATE_LOW)) | (pointer != ends))] = 3
    return status


def _decode_digits_numpy(words, starts, ends, rows, n, lanes):
    """Uniform digits lane by lane: the digit is t itself (C = t, m = 1), so no tree is needed."""
    digits = np.zeros((rows, n), dtype=np.int64)
    state, status, pointer = _initial_states(words, starts)
    for first in range(0, rows, lanes):
        row_ids = np.arange(first, min(rows, first + lanes))
        lane = row_ids - first
        for p in range(n - 1):
            if status[lane].all():
                break  # every lane of this block has failed: the section is rejected anyway
            left = np.int64(n - p)
            x = state[lane]
            y = (x & np.uint64(PROB_SCALE - 1)).astype(np.int64)
            t = ((y + 1) * left - 1) >> PROB_BITS
            lo = quantized(t, left)
            x = (quantized(t + 1, left) - lo).astype(np.uint64) * (x >> np.uint64(PROB_BITS)) + \
                (y - lo).astype(np.uint64)
            state[lane] = _read_words(x, (x < np.uint64(STATE_LOW)) & (status[lane] == 0), lane, pointer, ends,
                                      words, status)
            digits[row_ids, p] = t
    return digits, _final_status(state, pointer, ends, status)


def _decode_arrangement_numpy(words, starts, ends, counts, n, lanes):
    rows = counts.shape[0]
    symbols = np.zeros((rows, n), dtype=np.int64)
    state, status, pointer = _initial_states(words, starts)
    for first in range(0, rows, lanes):
        row_ids = np.arange(first, min(rows, first + lanes))
        lane = row_ids - first
        tree = _fenwick_build(counts[row_ids])
        remaining = counts[row_ids].copy()
        live = (remaining > 0).sum(axis=1)
        local = np.arange(row_ids.size)
        for p in range(n):
            if status[lane].all():
                break  # every lane of this block has failed: the section is rejected anyway
            left = np.int64(n - p)
            x = state[lane]
            y = (x & np.uint64(PROB_SCALE - 1)).astype(np.int64)
            coded = live > 1
            c, cum = _fenwick_find(tree, local, np.where(coded, ((y + 1) * left - 1) >> PROB_BITS, 0))
            lo = quantized(cum, left)
            f = quantized(cum + remaining[local, c], left) - lo
            x = np.where(coded, f.astype(np.uint64) * (x >> np.uint64(PROB_BITS)) + (y - lo).astype(np.uint64), x)
            state[lane] = _read_words(x, coded & (x < np.uint64(STATE_LOW)) & (status[lane] == 0), lane, pointer,
                                      ends, words, status)
            symbols[row_ids, p] = c
            _fenwick_add(tree, local, c, -1)
            remaining[local, c] -= 1
            live -= remaining[local, c] == 0
    return symbols, _final_status(state, pointer, ends, status)


# ---------------------------------------------------------------- numba backend

def _numba_kernels():
    """The compiled kernels, imported on first use so that numba loads only when it is needed."""
    from . import _rans_numba
    return _rans_numba
