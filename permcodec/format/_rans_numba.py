"""numba kernels of permcodec.format.rans: the same integer steps as ``_rans_numpy``, lanes and rows in parallel.

Only integer arithmetic happens here, so compiled and interpreted code agree
bit for bit. Imported lazily by rans; compiled on first use and cached. Each
kernel is serial over a range ``[lo, hi)`` of rows, lanes or lane groups and
releases the GIL; ``parallel.run_over`` splits the range across threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from ..backend import prepare_numba_cache, stamp_kernels
from ..parallel import run_over
from .ransmath import PROB_BITS, STATE_LOW

prepare_numba_cache()  # before any kernel here is defined (see backend.forget_stale_kernels)

_U32 = np.uint64(32)
_U33 = np.uint64(33)
_UPROB = np.uint64(PROB_BITS)
_LOW_MASK = np.uint64((1 << PROB_BITS) - 1)
_WORD_MASK = np.uint64(0xFFFFFFFF)
_L = np.uint64(STATE_LOW)
_SCALE = float(1 << PROB_BITS)
_M = np.int64(1 << PROB_BITS)
SIDE_BY_SIDE = 4  # lanes a thread decodes at once, to hide each one's latency (8: no faster on Conv13)


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
def _find(tree, size, target):
    """Class c and C (counts below c) with C <= target < C + count[c]; tree padded to a power of two.

    Branch-free descent: a mispredicted branch per level costs more than the
    whole step on random targets.
    """
    pos = 0
    rest = target
    step = size
    while step:
        value = tree[pos + step]
        take = value <= rest
        pos += step * take
        rest -= value * take
        step >>= 1
    return pos, target - rest


@njit(cache=True, nogil=True)
def _build_padded(tree, counts, k, size):
    """Fenwick tree over ``size`` >= k classes, classes k .. size-1 empty (index 0 unused)."""
    tree[:] = 0
    for i in range(1, k + 1):
        tree[i] = counts[i - 1]
    for i in range(1, size + 1):
        parent = i + (i & -i)
        if parent <= size:
            tree[parent] += tree[i]


@njit(cache=True, nogil=True)
def _padded_size(k):
    size = 1
    while size < k:
        size *= 2
    return size


@njit(cache=True, nogil=True)
def _arrangement_intervals(symbols, counts, start, freq, lo, hi):
    """(start, freq) of every position of rows lo .. hi-1 (freq 0: not coded)."""
    n = symbols.shape[1]
    k = counts.shape[1]
    for r in range(lo, hi):
        tree = np.empty(k + 1, np.int64)
        remaining = counts[r].copy()
        _build_padded(tree, remaining, k, k)
        live = 0
        for c in range(k):
            live += remaining[c] > 0
        for p in range(n):
            c = symbols[r, p]
            if live > 1:
                cum = _prefix(tree, c)
                left = n - p
                lo = (cum << PROB_BITS) // left
                start[r, p] = lo
                freq[r, p] = ((cum + remaining[c]) << PROB_BITS) // left - lo
            else:
                freq[r, p] = 0
            _add(tree, k, c, -1)
            remaining[c] -= 1
            live -= remaining[c] == 0


@njit(cache=True, nogil=True)
def _swap_digits(pi, digits, lo, hi):
    """Swap code of rows lo .. hi-1: d_p = (where pi[p] sits now) - p, then swap it to p."""
    n = pi.shape[1]
    for r in range(lo, hi):
        current = np.arange(n)
        where = np.arange(n)
        for p in range(n):
            wanted = pi[r, p]
            at = where[wanted]
            digits[r, p] = at - p
            displaced = current[p]
            current[at] = displaced
            where[displaced] = at
            current[p] = wanted
            where[wanted] = p


def permutation_digits(pi):
    digits = np.empty(pi.shape, np.int64)
    run_over(_swap_digits, pi.shape[0], pi, digits, work=pi.size)
    return digits


@njit(cache=True, nogil=True)
def lane_rows(rows, lanes, lane):
    """How many of ``rows`` rows lane ``lane`` codes (rows lane, lane + lanes, ...); elementwise for arrays."""
    return (rows - lane + lanes - 1) // lanes


@njit(cache=True, nogil=True)
def _encode_lanes(start, freq, lanes, out, out_start, used, lo, hi):
    rows, n = start.shape
    for j in range(lo, hi):
        x = _L
        w = out_start[j]
        last = j + ((rows - 1 - j) // lanes) * lanes
        for r in range(last, -1, -lanes):
            for p in range(n - 1, -1, -1):
                f = np.uint64(freq[r, p])
                if f == 0:
                    continue
                if x >= (f << _U33):
                    out[w] = x & _WORD_MASK
                    w += 1
                    x = x >> _U32
                x = ((x // f) << _UPROB) + (x % f) + np.uint64(start[r, p])
        out[w] = x & _WORD_MASK
        out[w + 1] = x >> _U32
        used[j] = w + 2 - out_start[j]


def encode_lanes(start, freq, lanes: int) -> list[np.ndarray]:
    rows, n = start.shape
    per_lane = lane_rows(rows, lanes, np.arange(lanes, dtype=np.int64)) * n + 2
    out_start = np.concatenate([[0], np.cumsum(per_lane)[:-1]]).astype(np.int64)
    out = np.empty(int(per_lane.sum()), dtype=np.uint64)
    used = np.zeros(lanes, np.int64)
    run_over(_encode_lanes, lanes, np.ascontiguousarray(start), np.ascontiguousarray(freq), lanes, out, out_start,
             used, work=start.size)
    return [out[s:s + u][::-1].copy() for s, u in zip(out_start, used)]


def arrangement_intervals(symbols, counts):
    start = np.zeros(symbols.shape, np.int64)
    freq = np.zeros(symbols.shape, np.int64)
    run_over(_arrangement_intervals, symbols.shape[0], symbols, counts, start, freq, work=symbols.size)
    return start, freq


@njit(cache=True, nogil=True, inline="always")
def _scaled_quotient(c, left, inverse):
    """floor(c * 2^31 / left) for 0 <= c <= left <= 2^31, given inverse = float64(2^31 / left).

    c * inverse is within 2^-21 of the quotient (c * 2^31 is exact in float64,
    each rounding adds at most 2^-53 relative), so its floor is off by at most
    one, and the remainder's sign fixes that: a multiply, not a 64-bit division.
    """
    q = np.int64(np.float64(c) * inverse)
    r = (c << PROB_BITS) - q * left
    if r < 0:
        q -= 1
    elif r >= left:
        q += 1
    return q


@njit(cache=True, nogil=True)
def _digit_tables(n):
    """M = whole[p] (n - p) + extra[p], and inverse[p] = M / (n - p) in float64 (for ``_scaled_quotient``)."""
    whole = np.empty(n, np.int64)
    extra = np.empty(n, np.int64)
    inverse = np.empty(n, np.float64)
    for p in range(n):
        whole[p] = (1 << PROB_BITS) // (n - p)
        extra[p] = (1 << PROB_BITS) % (n - p)
        inverse[p] = _SCALE / (n - p)
    return whole, extra, inverse


@njit(cache=True, nogil=True)
def _initial_state(words, start):
    """A lane's state from its first two words (high, low)."""
    return (np.uint64(words[start]) << _U32) | np.uint64(words[start + 1])


@njit(cache=True, nogil=True)
def _ended_cleanly(state, pointer, end):
    """Whether a lane ended as every valid one does: back at the state L with every word used."""
    return state == _L and pointer == end


# The columns of a stream table, one row per rANS lane of scheme exact to decode: its words [START, END), and the
# COUNT rows it codes, row r's values at BASE + r * STEP of a flat buffer. One tensor's lanes, or (``_small_numba``)
# the lanes of many small tensors, so that lanes of different tensors with rows of the same length decode side by side.
START, END, BASE, STEP, COUNT = range(5)
STREAM_COLUMNS = 5


@njit(cache=True, nogil=True)
def tensor_streams(lengths, lanes, rows, n, first_value):
    """(stream table, each stream's tensor) of tensors whose lanes' words lie back to back from word 0: tensor i
    has lanes[i] lanes (lane j codes rows j, j + lanes[i], ...) of its rows[i] rows of n[i], its values from
    first_value[i] on; ``lengths`` holds every lane's word count, tensor after tensor."""
    streams = np.empty((lengths.shape[0], STREAM_COLUMNS), np.int64)
    tensor_of = np.empty(lengths.shape[0], np.int64)
    s, word = 0, 0
    for i in range(lanes.shape[0]):
        for j in range(lanes[i]):
            streams[s, START] = word
            word += lengths[s]
            streams[s, END] = word
            streams[s, BASE] = first_value[i] + j * n[i]
            streams[s, STEP] = lanes[i] * n[i]
            streams[s, COUNT] = lane_rows(rows[i], lanes[i], j)
            tensor_of[s] = i
            s += 1
    return streams, tensor_of


@njit(cache=True, nogil=True)
def _decode_swap_streams(words, streams, ids, n, values, status, whole, extra, inverse):
    """Scheme exact, streams ``ids`` (rows of length n, their COUNTs descending) side by side: each decoded digit
    d_p (uniform, so the digit is t itself: C = t, m = 1) is applied at once as the swap of the row's values at
    p and p + d_p, so each row ends in its decoded order (the identity's rows end as the permutations
    themselves). status[s]: 1 for an initial state below L, 2 for a stream that ran out of words, 3 for one that
    did not end back at L with every word used.

    No division: floor(t M / Q) comes from ``_scaled_quotient``, and with
    M = q Q + r, floor((t + 1) M / Q) is that + q, plus one where the
    remainders carry. The streams are independent, so decoding them side by
    side hides the latency of each one's chain. The scratch is sized by the
    streams given, not by SIDE_BY_SIDE: another module's cached kernel that
    calls this one keeps the code it was compiled with.
    """
    width = ids.shape[0]
    state = np.empty(width, np.uint64)
    pointer = np.empty(width, np.int64)
    end = np.empty(width, np.int64)
    row_at = np.empty(width, np.int64)
    step = np.empty(width, np.int64)
    count = np.empty(width, np.int64)
    for k in range(width):
        pointer[k] = streams[ids[k], START] + 2
        end[k] = streams[ids[k], END]
        step[k] = streams[ids[k], STEP]
        row_at[k] = streams[ids[k], BASE] - step[k]  # moved on by a step before each row
        count[k] = streams[ids[k], COUNT]
        state[k] = _initial_state(words, streams[ids[k], START])
        if state[k] < _L:
            status[ids[k]] = 1
    active = width
    for r in range(count[0] if width else 0):
        while count[active - 1] <= r:
            active -= 1
        for k in range(active):
            row_at[k] += step[k]
        for p in range(n - 1):
            left = n - p
            for k in range(active):
                x = state[k]
                y = np.int64(x & _LOW_MASK)
                t = ((y + 1) * left - 1) >> PROB_BITS
                lo = _scaled_quotient(t, left, inverse[p])
                f = whole[p] + ((t << PROB_BITS) - lo * left + extra[p] >= left)
                x = np.uint64(f) * (x >> _UPROB) + np.uint64(y - lo)
                if x < _L:
                    if pointer[k] < end[k]:
                        x = (x << _U32) | np.uint64(words[pointer[k]])
                        pointer[k] += 1
                    elif status[ids[k]] == 0:
                        status[ids[k]] = 2
                state[k] = x
                at = row_at[k] + p
                moved = values[at + t]
                values[at + t] = values[at]
                values[at] = moved
    for k in range(width):
        if status[ids[k]] == 0 and not _ended_cleanly(state[k], pointer[k], end[k]):
            status[ids[k]] = 3


@njit(cache=True, nogil=True)
def _decode_swap_groups(words, streams, n, values, status, whole, extra, inverse, width, lo, hi):
    """Stream groups lo .. hi-1 of one tensor: group g is streams g*width .. g*width+width-1."""
    for g in range(lo, hi):
        first = g * width
        ids = np.arange(first, min(first + width, streams.shape[0]))
        _decode_swap_streams(words, streams, ids, n, values, status, whole, extra, inverse)


@njit(cache=True, nogil=True)
def _row_classes(pool_bits, values, counts):
    """The distinct values of a sorted row (as bits) and how often each occurs; returns how many there are."""
    k = 0
    for t in range(pool_bits.shape[0]):
        if t == 0 or pool_bits[t] != pool_bits[t - 1]:
            values[k] = pool_bits[t]
            counts[k] = 0
            k += 1
        counts[k - 1] += 1
    return k


@njit(cache=True, nogil=True)
def _largest_class(counts, classes):
    """(class, C) of the first class with the largest count, C the count of the classes below it."""
    big, below, cum = 0, 0, 0
    for c in range(classes):
        if counts[c] > counts[big]:
            big, below = c, cum
        cum += counts[c]
    return big, below


@intrinsic
def _popcount(typingctx, x):
    """The number of set bits of an integer (LLVM's ctpop: one instruction where the CPU has it)."""
    if not isinstance(x, types.Integer):
        return None
    return x(x), lambda context, builder, signature, args: builder.ctpop(args[0])


@njit(cache=True, nogil=True)
def _select_bit(word, k):
    """The position of the k-th set bit (from 0, lowest first) of a uint64 with more than k set bits: six
    halvings by popcount, no branch."""
    pos = 0
    for half in (32, 16, 8, 4, 2, 1):
        below = np.int64(_popcount(word & ((np.uint64(1) << np.uint64(half)) - np.uint64(1))))
        up = np.int64(k >= below)
        k -= below * up
        word >>= np.uint64(half * up)
        pos += half * up
    return pos


@njit(cache=True, nogil=True)
def _alive_items(remaining, classes, big, first_item, item_class, alive, word_counts):
    """Lay the row's items (one per element of a class other than ``big``, in class order) out as set bits:
    first_item[c] is class c's first item, item_class[i] the class of item i, alive[w] bits 64w .. 64w+63,
    word_counts[w] their count. Returns (words used, whether every such class has a single element)."""
    items, single = 0, True
    for c in range(classes):
        first_item[c] = items
        if c != big:
            for i in range(remaining[c]):
                item_class[items + i] = c
            items += remaining[c]
            single &= remaining[c] == 1
    words = (items + 63) >> 6
    for w in range(words):
        count = min(64, items - 64 * w)
        alive[w] = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - count)
        word_counts[w] = count
    return words, single


@njit(cache=True, nogil=True)
def _decode_class_row(x, pointer, end, words, pool_bits, out_bits, scratch):
    """Scheme multiset, one row of a lane from state ``x`` at word ``pointer``: each row's classes are the
    distinct values of its sorted pool, and each decoded symbol is written as its class's value. Returns
    (state, pointer, 0), or status 2 when the lane runs out of words.

    The row's largest class ("big", the zeros of a sparse pool) is a range
    check, [C_big, C_big + left), so most symbols of a sparse or shared pool
    need no search. The other classes are searched by their counts where
    they are few and large (shared and level pools), else by their elements
    (a sparse pool's distinct values, ``_decode_by_items``).
    """
    values, remaining = scratch[0], scratch[1]
    classes = _row_classes(pool_bits, values, remaining)
    if classes == 0:  # a row of no elements: no symbol, and no class to index
        return x, pointer, 0
    big, big_start = _largest_class(remaining, classes)
    if pool_bits.shape[0] - remaining[big] < 16 * (classes - 1):
        return _decode_by_items(x, pointer, end, words, out_bits, classes, big, big_start, scratch)
    return _decode_by_counts(x, pointer, end, words, out_bits, classes, big, big_start, scratch)


@njit(cache=True, nogil=True)
def _decode_by_counts(x, pointer, end, words, out_bits, classes, big, big_start, scratch):
    """The classes other than ``big`` in a Fenwick tree of their counts; a target above the big interval
    searches it less the big class's count."""
    # Kept whole (33 lines): the hot loop of multiset decoding, compiled as one frame.
    values, remaining, tree = scratch[0], scratch[1], scratch[6]
    n = out_bits.shape[0]
    big_left = remaining[big]
    remaining[big] = 0  # the tree counts the other classes only
    size = _padded_size(classes)
    _build_padded(tree, remaining, classes, size)
    remaining[big] = big_left
    live = classes
    for p in range(n):
        left = n - p
        y = np.int64(x & _LOW_MASK)
        target = ((y + 1) * left - 1) >> PROB_BITS if live > 1 else 0
        if big_start <= target < big_start + big_left:
            c, cum = big, big_start
        else:
            c, cum = _find(tree, size, target - big_left * (target >= big_start))
            cum += big_left * (c > big)
        if live > 1:
            inverse = _SCALE / left
            lo = _scaled_quotient(cum, left, inverse)
            f = _scaled_quotient(cum + remaining[c], left, inverse) - lo
            x = np.uint64(f) * (x >> _UPROB) + np.uint64(y - lo)
            if x < _L:
                if pointer >= end:
                    return x, pointer, 2
                x = (x << _U32) | np.uint64(words[pointer])
                pointer += 1
        out_bits[p] = values[c]
        if c == big:
            big_left -= 1
        else:
            _add(tree, size, c, -1)
            big_start -= c < big
        remaining[c] -= 1
        live -= remaining[c] == 0
    return x, pointer, 0


@njit(cache=True, nogil=True)
def _decode_by_items(x, pointer, end, words, out_bits, classes, big, big_start, scratch):
    """Every element of a class other than ``big`` is an "item", a set bit in class order. A class's
    remaining items are always its first ones (its last is cleared when one is decoded), so a target t among
    the items selects the t-th set bit, found through a Fenwick tree of the words' counts and a popcount
    halving within the word, and C is t less the item's offset in its class. Where every such class has one
    element (a sparse pool's distinct values) C is the target itself: the state's chain does not wait for
    the search, which only names the value to write."""
    # Kept whole (37 lines): the hot loop of multiset decoding, compiled as one frame. Its rANS step repeats
    # _decode_by_counts': as a shared function (inlined or not) or one loop for both, decoding measured 10-20 %
    # slower on shared pools, 2x without inlining.
    values, remaining, first_item, item_class, alive, word_counts, tree = scratch
    n = out_bits.shape[0]
    big_left = remaining[big]
    used_words, single = _alive_items(remaining, classes, big, first_item, item_class, alive, word_counts)
    size = _padded_size(used_words)
    _build_padded(tree, word_counts, used_words, size)
    live = classes
    for p in range(n):
        left = n - p
        y = np.int64(x & _LOW_MASK)
        target = ((y + 1) * left - 1) >> PROB_BITS if live > 1 else 0
        if big_start <= target < big_start + big_left:
            c, cum, count = big, big_start, big_left
        else:
            t = target - big_left * (target >= big_start)  # the target's rank among the alive items
            w, before = _find(tree, size, t)
            item = 64 * w + _select_bit(alive[w], t - before)
            c = item_class[item]
            if single:
                cum, count = target, 1
            else:
                cum, count = t - (item - first_item[c]) + big_left * (c > big), remaining[c]
        if live > 1:
            inverse = _SCALE / left
            lo = _scaled_quotient(cum, left, inverse)
            f = _scaled_quotient(cum + count, left, inverse) - lo
            x = np.uint64(f) * (x >> _UPROB) + np.uint64(y - lo)
            if x < _L:
                if pointer >= end:
                    return x, pointer, 2
                x = (x << _U32) | np.uint64(words[pointer])
                pointer += 1
        out_bits[p] = values[c]
        if c == big:
            big_left -= 1
        else:
            last = first_item[c] + remaining[c] - 1
            alive[last >> 6] &= ~(np.uint64(1) << np.uint64(last & 63))
            _add(tree, size, last >> 6, -1)
            big_start -= c < big
        remaining[c] -= 1
        live -= remaining[c] == 0
    return x, pointer, 0


@njit(cache=True, nogil=True)
def _decode_class_lanes(words, starts, ends, pool_bits, lanes, out_bits, status, lo, hi):
    """Scheme multiset, lanes lo .. hi-1, one at a time: a lane's scratch (its row's classes and items) is
    then small enough to stay in the core's cache, which decoding several lanes side by side, each with its
    own scratch, measured slower. A lane that fails stops; its rows are not used."""
    rows, n = pool_bits.shape
    words_per_row = (n + 63) >> 6
    # values, remaining, first_item, item_class, alive, word_counts, tree (of counts or of word counts)
    scratch = (np.empty(n, pool_bits.dtype), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int32),
               np.empty(words_per_row, np.uint64), np.empty(words_per_row, np.int64),
               np.empty(_padded_size(n) + 1, np.int64))
    for j in range(lo, hi):
        x = _initial_state(words, starts[j])
        pointer = starts[j] + 2
        if x < _L:
            status[j] = 1
            continue
        for r in range(j, rows, lanes):
            x, pointer, status[j] = _decode_class_row(x, pointer, ends[j], words, pool_bits[r], out_bits[r],
                                                      scratch)
            if status[j]:
                break
        if status[j] == 0 and not _ended_cleanly(x, pointer, ends[j]):
            status[j] = 3


@njit(cache=True, nogil=True)
def _gather_items(row_bits, items, base):
    """The row's elements other than zero (bits 0), in position order, at items[base ...], then a 0 after them;
    returns their count."""
    k = 0
    for j in range(row_bits.shape[0]):
        items[base + k] = row_bits[j]
        k += row_bits[j] != 0
    items[base + k] = 0
    return k


@njit(cache=True, nogil=True)
def _decode_sparse_group(words, starts, ends, row_bits, lanes, first, width, status, whole, extra, inverse, items):
    """Scheme sparse, lanes first .. first+width-1 side by side (their r-th rows together), each row decoded in
    place of its initial values; ``items`` holds one scratch row of n + 1 per lane. status as for exact.

    With k items and z zeros left (Q = k + z), a target t < k is the item digit (C = t, m = 1: freq from the
    digit tables, as exact), and t >= k the zero class (C = k, m = z: freq = M - start, its interval ending at
    Q). Both take one scaled quotient of C = min(t, k), and both read items[taken + C]: the zero stored after
    the items is what a zero symbol reads, and its swap moves nothing. A position that is not coded (one
    item and no zero left, or only zeros) needs no case of its own: its one symbol's interval is all of
    [0, M) (start 0, freq M), so the same step leaves the state as it is.
    """
    # Kept whole: the hot loop of sparse decoding, branch-free but for the renormalization.
    rows, n = row_bits.shape
    flat = row_bits.reshape(-1)
    state = np.empty(width, np.uint64)
    pointer = np.empty(width, np.int64)
    k = np.empty(width, np.int64)
    taken = np.empty(width, np.int64)
    row_at = np.empty(width, np.int64)
    for w in range(width):
        state[w] = _initial_state(words, starts[first + w])
        pointer[w] = starts[first + w] + 2
        if state[w] < _L:
            status[first + w] = 1
    for r in range(lane_rows(rows, lanes, first)):
        active = width
        while first + active - 1 + r * lanes >= rows:  # the group's last lanes may have a row fewer
            active -= 1
        for w in range(active):
            row = first + w + r * lanes
            row_at[w] = row * n
            taken[w] = w * (n + 1)
            k[w] = _gather_items(row_bits[row], items, taken[w])
        for p in range(n):
            left = n - p
            for w in range(active):
                x, kw = state[w], k[w]
                y = np.int64(x & _LOW_MASK)
                t = ((y + 1) * left - 1) >> PROB_BITS
                zero = t >= kw
                c = min(t, kw)
                lo = _scaled_quotient(c, left, inverse[p])
                f = _M - lo if zero else whole[p] + ((c << PROB_BITS) - lo * left + extra[p] >= left)
                x = np.uint64(f) * (x >> _UPROB) + np.uint64(y - lo)
                if x < _L:
                    if pointer[w] < ends[first + w]:
                        x = (x << _U32) | np.uint64(words[pointer[w]])
                        pointer[w] += 1
                    elif status[first + w] == 0:
                        status[first + w] = 2
                state[w] = x
                source = taken[w] + c
                target = source if zero else taken[w]
                value = items[source]
                items[source] = items[target]
                items[target] = value
                flat[row_at[w] + p] = value
                taken[w] += 1 - zero
                k[w] = kw - 1 + zero
    for w in range(width):
        if status[first + w] == 0 and not _ended_cleanly(state[w], pointer[w], ends[first + w]):
            status[first + w] = 3


@njit(cache=True, nogil=True)
def _decode_sparse_groups(words, starts, ends, row_bits, lanes, status, whole, extra, inverse, width, lo, hi):
    """Lane groups lo .. hi-1 of one tensor: group g is lanes g*width .. g*width+width-1."""
    items = np.empty(min(width, lanes) * (row_bits.shape[1] + 1), row_bits.dtype)  # a scratch row per lane
    for g in range(lo, hi):
        first = g * width
        _decode_sparse_group(words, starts, ends, row_bits, lanes, first, min(width, lanes - first), status, whole,
                             extra, inverse, items)


def decode_onto(words, starts, ends, values, lanes):
    """Scheme exact: (out, status), out[r, j] = values[r, pi[r, j]] for the permutations coded in the words;
    a writeable C-ordered ``values`` is decoded in place."""
    status = np.zeros(lanes, dtype=np.int64)
    out = values if values.flags.c_contiguous and values.flags.writeable else np.array(values, order="C")
    rows, n = out.shape
    whole, extra, inverse = _digit_tables(n)
    one = np.ones(1, np.int64)
    streams, _ = tensor_streams(ends - starts, one * lanes, one * rows, one * n, one * 0)
    width = SIDE_BY_SIDE  # read once, here: the kernel takes it as an argument, not as a compiled-in constant
    run_over(_decode_swap_groups, (lanes + width - 1) // width, words, streams, n, out.reshape(-1), status, whole,
             extra, inverse, width, work=out.size)
    return out, status


def decode_classes_onto(words, starts, ends, pool_sorted, lanes):
    """Scheme multiset straight to values: (out, status), out[r, p] the value of the class decoded at (r, p)
    among the distinct values of ``pool_sorted[r]`` (each row ascending; float32 or int32, compared by bits)."""
    rows, n = pool_sorted.shape
    status = np.zeros(lanes, dtype=np.int64)
    out = np.empty((rows, n), dtype=pool_sorted.dtype)
    pool_bits = np.ascontiguousarray(pool_sorted).view(np.int32)
    run_over(_decode_class_lanes, lanes, words, starts, ends, pool_bits, lanes, out.view(np.int32), status,
             work=rows * n)
    return out, status


def decode_sparse_onto(words, starts, ends, values, lanes):
    """Scheme sparse: (out, status), each row of ``values`` (4-byte elements, zero where all bits are) in its
    decoded order; a writeable C-ordered ``values`` is decoded in place."""
    status = np.zeros(lanes, dtype=np.int64)
    out = values if values.flags.c_contiguous and values.flags.writeable else np.array(values, order="C")
    rows, n = out.shape
    whole, extra, inverse = _digit_tables(n)
    width = SIDE_BY_SIDE
    run_over(_decode_sparse_groups, (lanes + width - 1) // width, words, starts, ends, out.view(np.int32), lanes,
             status, whole, extra, inverse, width, work=out.size)
    return out, status


def decode_arrangement(words, starts, ends, counts, n, lanes):
    """The class symbols, as ``decode_classes_onto`` of a pool whose class c holds the value c, counts[r, c]
    times: classes that do not occur take no part in the coding either way."""
    rows, k = counts.shape
    if rows and not (counts.sum(axis=1) == n).all():
        raise ValueError(f"class counts must add up to the row length {n} in every row")
    pool = np.repeat(np.tile(np.arange(k, dtype=np.int32), rows), counts.reshape(-1)).reshape(rows, n)
    symbols, status = decode_classes_onto(words, starts, ends, pool, lanes)
    return symbols.astype(np.int64), status


stamp_kernels(globals())  # after the last kernel (see backend.stamp_kernels)
