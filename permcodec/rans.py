"""Arrangement coding: which class of a row's pool sits at each position, with rANS, near log2(n!/prod m!).

A row of ``n`` positions draws its symbols from classes ``0 .. K-1`` with known
counts (summing to ``n``). Position ``p`` is coded with probability
``remaining[c] / R`` (``R = n - p``): the cost of a row is log2(n! / prod m_c!)
plus rounding, i.e. a Lehmer code when every count is 1 (scheme "exact") and a
multiset code otherwise (scheme "multiset"). Each probability is quantized to
``M = 2^31`` as ``start = floor(C * M / R)``, ``freq = floor((C + m) * M / R) - start``,
which is exact, monotone and sums to ``M`` without redistribution. Positions
where only one class remains are not coded at all.

Rows are split into lanes: lane ``j`` codes rows ``j, j + lanes, ...`` one
after another into its own 64-bit-state rANS stream of 32-bit words, so
decoding runs across lanes in parallel and a row is sequential at most. The
section is ``u32 word_count[lanes]`` followed by every lane's words, all
little-endian. See specs/format.md, "Arrangement coding".

Two backends give identical words: numba kernels (parallel over lanes) when
numba is importable, and numpy vectorized across lanes otherwise. Nothing here
knows about tensors or files.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import FormatError

PROB_BITS = 31
PROB_SCALE = 1 << PROB_BITS        # M: quantized probabilities sum to this
STATE_LOW = 1 << 32                # L: states live in [L, 2^64)
WORD_BITS = 32
MAX_ROW_LENGTH = PROB_SCALE        # every class keeps freq >= 1 while R <= M

try:  # numba compiles the integer kernels; absent, the numpy backend gives the same words
    import numba
except ImportError:  # pragma: no cover - exercised on machines without numba
    numba = None

BACKENDS = ("numba", "numpy") if numba is not None else ("numpy",)


def default_backend() -> str:
    """numba when available, unless PERMCODEC_BACKEND=numpy asks for the pure fallback."""
    wanted = os.environ.get("PERMCODEC_BACKEND", BACKENDS[0])
    return wanted if wanted in BACKENDS else BACKENDS[0]


def check_backend(backend: str | None) -> str:
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not available here; available: {', '.join(BACKENDS)}")
    return backend


# ---------------------------------------------------------------- public API

def encode(symbols: np.ndarray, counts: np.ndarray | None, lanes: int, backend: str | None = None) -> bytes:
    """Code ``symbols`` (int [rows, n], the class at each position) given each row's class ``counts``.

    ``counts`` is int [rows, K] with every row summing to ``n`` (zero-padded
    on the right), or None for "every position its own class" (K = n, counts 1).
    The caller guarantees that each row's symbols match its counts.
    """
    symbols = np.ascontiguousarray(symbols, dtype=np.int64)
    rows, n = symbols.shape
    counts = all_ones(rows, n) if counts is None else np.ascontiguousarray(counts, dtype=np.int64)
    assert 1 <= lanes <= max(rows, 1) and n <= MAX_ROW_LENGTH
    if check_backend(backend) == "numba":
        lane_words = _numba_kernels().encode(symbols, counts, lanes)
    else:
        lane_words = _encode_numpy(symbols, counts, lanes)
    lengths = np.array([len(words) for words in lane_words], dtype="<u4")
    return lengths.tobytes() + b"".join(words.astype("<u4").tobytes() for words in lane_words)


def decode(section: bytes, counts: np.ndarray | None, rows: int, n: int, lanes: int, what: str,
           backend: str | None = None) -> np.ndarray:
    """The int64 [rows, n] symbols coded in ``section``; FormatError if the section is not a valid coding."""
    words, starts, ends = split_lanes(section, lanes, what)
    counts = all_ones(rows, n) if counts is None else np.ascontiguousarray(counts, dtype=np.int64)
    if check_backend(backend) == "numba":
        symbols, status = _numba_kernels().decode(words, starts, ends, counts, n, lanes)
    else:
        symbols, status = _decode_numpy(words, starts, ends, counts, n, lanes)
    bad = np.flatnonzero(status)
    if bad.size:
        lane = int(bad[0])
        raise FormatError(f"{what}: lane {lane} {LANE_ERRORS[int(status[lane])]}")
    return symbols


LANE_ERRORS = {
    1: "starts with a state below 2^32",
    2: "runs out of words before its last row",
    3: "does not end in the initial state 2^32 with every word used (corrupt coding)",
}


def all_ones(rows: int, n: int) -> np.ndarray:
    return np.ones((rows, n), dtype=np.int64)


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


def quantized(cum: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """floor(cum * M / R), elementwise, exact in int64 (cum <= R <= 2^31)."""
    return (cum << PROB_BITS) // remaining


# ---------------------------------------------------------------- numpy backend

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


def _row_model_numpy(symbols: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        r = np.int64(n - p)
        lo = quantized(cum, r)
        start[:, p] = np.where(coded, lo, 0)
        freq[:, p] = np.where(coded, quantized(cum + m, r) - lo, 0)
        _fenwick_add(tree, every, c, -1)
        remaining[every, c] -= 1
        live -= remaining[every, c] == 0
    return start, freq


def _encode_numpy(symbols: np.ndarray, counts: np.ndarray, lanes: int) -> list[np.ndarray]:
    rows, n = symbols.shape
    start, freq = _row_model_numpy(symbols, counts)
    state = np.full(lanes, STATE_LOW, dtype=np.uint64)
    emitted: list[list[np.ndarray]] = [[] for _ in range(lanes)]
    blocks = -(-rows // lanes)
    for block in reversed(range(blocks)):
        row_ids = np.arange(block * lanes, min(rows, (block + 1) * lanes))
        lane = row_ids - block * lanes
        for p in reversed(range(n)):
            f = freq[row_ids, p].astype(np.uint64)
            coded = f > 0
            x = state[lane]
            spill = coded & (x >= (f << np.uint64(33)))
            for j in lane[spill]:
                emitted[j].append(np.uint64(int(state[j]) & 0xFFFFFFFF))
            x = np.where(spill, x >> np.uint64(WORD_BITS), x)
            safe_f = np.where(coded, f, np.uint64(1))
            encoded = ((x // safe_f) << np.uint64(PROB_BITS)) + (x % safe_f) + start[row_ids, p].astype(np.uint64)
            state[lane] = np.where(coded, encoded, x)
    out = []
    for j in range(lanes):
        x = int(state[j])
        words = [int(w) for w in emitted[j]] + [x & 0xFFFFFFFF, x >> 32]
        out.append(np.array(words[::-1], dtype=np.uint64))
    return out


def _decode_numpy(words, starts, ends, counts, n, lanes):
    rows = counts.shape[0]
    symbols = np.zeros((rows, n), dtype=np.int64)
    status = np.zeros(lanes, dtype=np.int64)
    state = (words[starts] << np.uint64(32)) | words[starts + 1]
    status[state < np.uint64(STATE_LOW)] = 1
    pointer = starts + 2
    for first in range(0, rows, lanes):
        row_ids = np.arange(first, min(rows, first + lanes))
        lane = row_ids - first
        ok = status[lane] == 0
        row_ids, lane = row_ids[ok], lane[ok]
        if not row_ids.size:
            continue
        tree = _fenwick_build(counts[row_ids])
        remaining = counts[row_ids].copy()
        live = (remaining > 0).sum(axis=1)
        local = np.arange(row_ids.size)
        for p in range(n):
            r = np.int64(n - p)
            x = state[lane]
            y = (x & np.uint64(PROB_SCALE - 1)).astype(np.int64)
            coded = live > 1
            target = np.where(coded, ((y + 1) * r - 1) >> PROB_BITS, 0)
            c, cum = _fenwick_find(tree, local, target)
            m = remaining[local, c]
            lo = quantized(cum, r)
            f = quantized(cum + m, r) - lo
            decoded = f.astype(np.uint64) * (x >> np.uint64(PROB_BITS)) + (y - lo).astype(np.uint64)
            x = np.where(coded, decoded, x)
            need = coded & (x < np.uint64(STATE_LOW))
            short = need & (pointer[lane] >= ends[lane])
            status[lane[short]] = 2
            need &= ~short
            read = pointer[lane[need]]
            x[need] = (x[need] << np.uint64(32)) | words[read]
            pointer[lane[need]] += 1
            state[lane] = x
            symbols[row_ids, p] = c
            _fenwick_add(tree, local, c, -1)
            remaining[local, c] -= 1
            live -= remaining[local, c] == 0
    done = (status == 0) & ((state != np.uint64(STATE_LOW)) | (pointer != ends))
    status[done] = 3
    return symbols, status


# ---------------------------------------------------------------- numba backend

_KERNELS = None


def _numba_kernels():
    global _KERNELS
    if _KERNELS is None:
        from . import _rans_numba
        _KERNELS = _rans_numba
    return _KERNELS
