"""numpy backend of permcodec.format.rans: the same integer steps as ``_rans_numba``, vectorized across lanes.

Same function names and identical words as the numba kernels; used where numba
is not installed or PERMCODEC_BACKEND=numpy. A lane still advances one
position per numpy step, so this runs at about 1/30 of the compiled speed.
"""

from __future__ import annotations

import numpy as np

from .ransmath import PROB_BITS, PROB_SCALE, STATE_LOW, WORD_BITS, quantized


def permutation_digits(pi: np.ndarray) -> np.ndarray:
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


def permutations_of(digits: np.ndarray) -> np.ndarray:
    rows, n = digits.shape
    every = np.arange(rows)
    out = np.tile(np.arange(n, dtype=np.int64), (rows, 1))
    for p in range(n - 1):
        at = p + digits[:, p]
        moved = out[every, at]
        out[every, at] = out[:, p]
        out[:, p] = moved
    return out


def permute_rows(digits: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[r, pi[r, j]] for the permutations pi whose swap digits are ``digits``."""
    return np.take_along_axis(values, permutations_of(digits), axis=1)


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


def arrangement_intervals(symbols: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def encode_lanes(start: np.ndarray, freq: np.ndarray, lanes: int) -> list[np.ndarray]:
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


def initial_states(words, starts):
    state = (words[starts].astype(np.uint64) << np.uint64(32)) | words[starts + 1]
    status = np.where(state < np.uint64(STATE_LOW), 1, 0).astype(np.int64)
    return state, status, starts + 2


def final_status(state, pointer, ends, status):
    status[(status == 0) & ((state != np.uint64(STATE_LOW)) | (pointer != ends))] = 3
    return status


def decode_digits(words, starts, ends, rows, n, lanes):
    """Uniform digits lane by lane: the digit is t itself (C = t, m = 1), so no tree is needed."""
    digits = np.zeros((rows, n), dtype=np.int64)
    state, status, pointer = initial_states(words, starts)
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
    return digits, final_status(state, pointer, ends, status)


def decode_arrangement(words, starts, ends, counts, n, lanes):
    rows = counts.shape[0]
    symbols = np.zeros((rows, n), dtype=np.int64)
    state, status, pointer = initial_states(words, starts)
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
    return symbols, final_status(state, pointer, ends, status)


def decode_onto(words, starts, ends, values, lanes):
    """Scheme exact: (out, status), out[r, j] = values[r, pi[r, j]] for the permutations coded in the words."""
    rows, n = values.shape
    digits, status = decode_digits(words, starts, ends, rows, n, lanes)
    return permute_rows(digits, values), status


def decode_sparse_onto(words, starts, ends, values, lanes):
    """Scheme sparse: (out, status), each row of ``values`` (4-byte elements, zero where all bits are) in its
    decoded order. Each row's items (its other elements, in position order) sit at the front of a scratch row
    with zeros after them, so a zero symbol reads a zero at items[taken + k] and its swap moves nothing. A
    position that is not coded needs no case of its own: its one symbol's interval is all of [0, M)."""
    rows, n = values.shape
    bits = np.ascontiguousarray(values).view(np.int32)
    out = np.empty_like(bits)
    state, status, pointer = initial_states(words, starts)
    for first in range(0, rows, lanes):
        row_ids = np.arange(first, min(rows, first + lanes))
        lane = row_ids - first
        local = np.arange(row_ids.size)
        block = bits[row_ids]
        order = np.argsort(block == 0, axis=1, kind="stable")
        items = np.zeros((row_ids.size, n + 1), dtype=np.int32)
        items[:, :n] = np.take_along_axis(block, order, axis=1)
        k = np.count_nonzero(block, axis=1).astype(np.int64)
        z = n - k
        taken = np.zeros(row_ids.size, dtype=np.int64)
        for p in range(n):
            left = np.int64(n - p)
            x = state[lane]
            y = (x & np.uint64(PROB_SCALE - 1)).astype(np.int64)
            t = ((y + 1) * left - 1) >> PROB_BITS
            zero = t >= k
            c = np.minimum(t, k)
            lo = quantized(c, left)
            f = np.where(zero, PROB_SCALE - lo, quantized(c + 1, left) - lo)
            x = f.astype(np.uint64) * (x >> np.uint64(PROB_BITS)) + (y - lo).astype(np.uint64)
            state[lane] = _read_words(x, (x < np.uint64(STATE_LOW)) & (status[lane] == 0), lane, pointer, ends,
                                      words, status)
            source = taken + c
            target = np.where(zero, source, taken)
            value = items[local, source]
            items[local, source] = items[local, target]
            items[local, target] = value
            out[row_ids, p] = value
            taken += ~zero
            k -= ~zero
            z -= zero
    return out.view(values.dtype), final_status(state, pointer, ends, status)
