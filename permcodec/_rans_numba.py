"""numba kernels of permcodec.rans: the same integer steps as its numpy backend, one lane per thread.

Only integer arithmetic happens here, so compiled and interpreted code agree
bit for bit. Imported lazily by rans; compiled on first use and cached.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .rans import PROB_BITS, STATE_LOW

_U32 = np.uint64(32)
_U33 = np.uint64(33)
_UPROB = np.uint64(PROB_BITS)
_LOW_MASK = np.uint64((1 << PROB_BITS) - 1)
_WORD_MASK = np.uint64(0xFFFFFFFF)
_L = np.uint64(STATE_LOW)


@njit(cache=True, nogil=True)
def _build(tree, counts, k):
    tree[0] = 0
    for i in range(1, k + 1):
        tree[i] = counts[i - 1]
    for i in range(1, k + 1):
        parent = i + (i & -i)
        if parent <= k:
            tree[parent] += tree[i]


@njit(cache=True, nogil=True)
def _prefix(tree, index):
    total = 0
    while index > 0:
        total += tree[index]
        index -= index & -index
    return total


@njit(cache=True, nogil=True)
def _add(tree, k, index, delta):
    i = index + 1
    while i <= k:
        tree[i] += delta
        i += i & -i


@njit(cache=True, nogil=True)
def _find(tree, k, top, target):
    pos = 0
    rest = target
    step = top
    while step:
        nxt = pos + step
        if nxt <= k and tree[nxt] <= rest:
            pos = nxt
            rest -= tree[nxt]
        step >>= 1
    return pos, target - rest


@njit(cache=True, nogil=True)
def _top(k):
    top = 1
    while top * 2 <= k:
        top *= 2
    return top if k else 0


@njit(cache=True, parallel=True)
def _encode_lanes(symbols, counts, lanes, out, out_start):
    rows, n = symbols.shape
    k = counts.shape[1]
    used = np.zeros(lanes, np.int64)
    for j in prange(lanes):
        tree = np.empty(k + 1, np.int64)
        remaining = np.empty(k, np.int64)
        start = np.empty(n, np.int64)
        freq = np.empty(n, np.int64)
        x = _L
        w = out_start[j]
        last = j + ((rows - 1 - j) // lanes) * lanes
        for r in range(last, -1, -lanes):
            _build(tree, counts[r], k)
            live = 0
            for c in range(k):
                remaining[c] = counts[r, c]
                if remaining[c] > 0:
                    live += 1
            for p in range(n):
                c = symbols[r, p]
                if live > 1:
                    cum = _prefix(tree, c)
                    rr = n - p
                    lo = (cum << PROB_BITS) // rr
                    start[p] = lo
                    freq[p] = ((cum + remaining[c]) << PROB_BITS) // rr - lo
                else:
                    freq[p] = 0
                _add(tree, k, c, -1)
                remaining[c] -= 1
                if remaining[c] == 0:
                    live -= 1
            for p in range(n - 1, -1, -1):
                f = np.uint64(freq[p])
                if f == 0:
                    continue
                if x >= (f << _U33):
                    out[w] = x & _WORD_MASK
                    w += 1
                    x = x >> _U32
                x = ((x // f) << _UPROB) + (x % f) + np.uint64(start[p])
        out[w] = x & _WORD_MASK
        out[w + 1] = x >> _U32
        used[j] = w + 2 - out_start[j]
    return used


def encode(symbols: np.ndarray, counts: np.ndarray, lanes: int) -> list[np.ndarray]:
    rows, n = symbols.shape
    per_lane = np.array([((rows - j + lanes - 1) // lanes) * n + 2 for j in range(lanes)], dtype=np.int64)
    out_start = np.concatenate([[0], np.cumsum(per_lane)[:-1]]).astype(np.int64)
    out = np.empty(int(per_lane.sum()), dtype=np.uint64)
    if rows == 0:
        out[0::2], out[1::2] = STATE_LOW & 0xFFFFFFFF, STATE_LOW >> 32
        used = np.full(lanes, 2, np.int64)
    else:
        used = _encode_lanes(symbols, counts, lanes, out, out_start)
    return [out[s:s + u][::-1].copy() for s, u in zip(out_start, used)]


@njit(cache=True, parallel=True)
def _decode_lanes(words, starts, ends, counts, n, lanes, symbols, status):
    rows, k = counts.shape
    top = _top(k)
    for j in prange(lanes):
        tree = np.empty(k + 1, np.int64)
        remaining = np.empty(k, np.int64)
        pointer = starts[j]
        x = (words[pointer] << _U32) | words[pointer + 1]
        pointer += 2
        if x < _L:
            status[j] = 1
            continue
        for r in range(j, rows, lanes):
            _build(tree, counts[r], k)
            live = 0
            for c in range(k):
                remaining[c] = counts[r, c]
                if remaining[c] > 0:
                    live += 1
            for p in range(n):
                if live > 1:
                    rr = n - p
                    y = np.int64(x & _LOW_MASK)
                    c, cum = _find(tree, k, top, ((y + 1) * rr - 1) >> PROB_BITS)
                    lo = (cum << PROB_BITS) // rr
                    f = ((cum + remaining[c]) << PROB_BITS) // rr - lo
                    x = np.uint64(f) * (x >> _UPROB) + np.uint64(y - lo)
                    if x < _L:
                        if pointer >= ends[j]:
                            status[j] = 2
                            break
                        x = (x << _U32) | words[pointer]
                        pointer += 1
                else:
                    c, cum = _find(tree, k, top, 0)
                symbols[r, p] = c
                _add(tree, k, c, -1)
                remaining[c] -= 1
                if remaining[c] == 0:
                    live -= 1
            if status[j]:
                break
        if status[j] == 0 and (x != _L or pointer != ends[j]):
            status[j] = 3


def decode(words, starts, ends, counts, n, lanes):
    rows = counts.shape[0]
    symbols = np.zeros((rows, n), dtype=np.int64)
    status = np.zeros(lanes, dtype=np.int64)
    _decode_lanes(words, starts.astype(np.int64), ends.astype(np.int64), counts, n, lanes, symbols, status)
    return symbols, status
