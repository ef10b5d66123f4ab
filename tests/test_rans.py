"""Arrangement coding (rANS): both backends give the same bytes, pinned worked examples, errors, near-bound sizes."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from permcodec import FormatError
from permcodec.format import rans

BACKENDS = rans.BACKENDS
numba_only = pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")


def random_permutations(rows, n, seed=0):
    return np.argsort(np.random.default_rng(seed).random((rows, n)), axis=1), None  # None: scheme exact


def random_multisets(rows, n, classes, seed=0):
    """Symbols drawn from `classes` classes, some of which may never occur in a row."""
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, classes, (rows, n))
    counts = np.stack([np.bincount(row, minlength=classes) for row in symbols]) if rows else \
        np.zeros((0, classes), np.int64)
    return symbols, counts


def dominant_class(rows, n, classes, big, share, seed=0):
    """Class ``big`` at about ``share`` of the positions, the rest spread over the other classes: the decoder
    keeps a row's largest class out of its search tree, wherever that class lies and however rows tie."""
    rng = np.random.default_rng(seed)
    others = np.array([c for c in range(classes) if c != big])
    symbols = np.where(rng.random((rows, n)) < share, big, rng.choice(others, (rows, n)))
    return symbols, np.stack([np.bincount(row, minlength=classes) for row in symbols])


def shuffled_multiset(counts, rows, seed=0):
    """Rows that each arrange the multiset ``counts`` (class c ``counts[c]`` times) in a random order."""
    rng = np.random.default_rng(seed)
    row = np.repeat(np.arange(len(counts)), counts)
    return np.stack([rng.permutation(row) for _ in range(rows)]), np.tile(counts, (rows, 1))


SPARSE_LIKE = [1] * 5 + [150] + [1] * 44  # one large class among classes of one element (a sparse pool)


CASES = {
    "perm 5x7": random_permutations(5, 7),
    "perm 17x33": random_permutations(17, 33, 1),
    "perm 1x1": random_permutations(1, 1),
    "no positions": random_permutations(3, 0),
    "no rows": random_permutations(0, 4),
    "two classes": random_multisets(6, 40, 2, 2),
    "many classes, some empty": random_multisets(4, 30, 9, 3),
    "one class": (np.zeros((3, 8), np.int64), np.full((3, 1), 8)),
    "rows of one": random_multisets(4, 1, 3, 4),
    "largest class first": dominant_class(5, 200, 40, 0, 0.7, 5),
    "largest class in the middle": dominant_class(5, 200, 40, 17, 0.7, 6),
    "largest class last": dominant_class(5, 200, 40, 39, 0.9, 7),
    "largest classes tied": (np.tile([0, 1, 1, 2, 2, 3], (3, 4)), np.tile([4, 8, 8, 4], (3, 1))),
    "single elements beside a large class": shuffled_multiset(SPARSE_LIKE, 4, 8),
    "single elements and one pair": shuffled_multiset(SPARSE_LIKE[:7] + [2] + SPARSE_LIKE[8:], 4, 9),
    "many elements per class": shuffled_multiset([30, 90, 45, 60], 3, 10),
}


def encode(symbols, counts, lanes, backend=None):
    if counts is None:
        return rans.encode_permutations(symbols, lanes, backend)
    return rans.encode_arrangement(symbols, counts, lanes, backend)


def decode(section, counts, rows, n, lanes, what, backend=None):
    if counts is None:
        return rans.decode_permutations(section, rows, n, lanes, what, backend)
    return rans.decode_arrangement(section, counts, rows, n, lanes, what, backend)


def lane_counts(rows):
    return sorted({1, 2, max(rows, 1)} & set(range(1, max(rows, 1) + 1)))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip(case, backend):
    symbols, counts = CASES[case]
    rows, n = symbols.shape
    for lanes in lane_counts(rows):
        section = encode(symbols, counts, lanes, backend)
        assert np.array_equal(decode(section, counts, rows, n, lanes, "t", backend), symbols)


@numba_only
@pytest.mark.parametrize("case", CASES)
def test_numba_and_numpy_give_identical_bytes(case):
    symbols, counts = CASES[case]
    for lanes in lane_counts(symbols.shape[0]):
        assert encode(symbols, counts, lanes, "numba") == encode(symbols, counts, lanes, "numpy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_worked_example_of_exact_is_pinned(backend):
    """specs/format.md Section 10: pi = [2, 0, 1] in both rows of a 2 x 3 tensor, one lane."""
    symbols = np.array([[2, 0, 1], [2, 0, 1]])
    assert rans.encode_digits(np.array([[2, 1, 0], [2, 1, 0]]), 1, backend) == encode(symbols, None, 1, backend)
    section = bytes.fromhex("02000000" "29000000" "8aaaaaea")
    assert encode(symbols, None, 1, backend) == section
    assert decode(section, None, 2, 3, 1, "t", backend).tolist() == symbols.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_worked_example_of_multiset_is_pinned(backend):
    """specs/format.md Section 11: symbols [1, 0, 0, 1, 0] with class counts [3, 2]."""
    symbols, counts = np.array([[1, 0, 0, 1, 0]]), np.array([[3, 2]])
    section = bytes.fromhex("02000000" "0a000000" "8a9999d9")
    assert encode(symbols, counts, 1, backend) == section
    assert decode(section, counts, 1, 5, 1, "t", backend).tolist() == symbols.tolist()


def test_a_permutation_costs_its_information_bound():
    symbols, _ = random_permutations(64, 1024, 4)
    section = encode(symbols, None, 1)
    bound = 64 * math.lgamma(1025) / math.log(2)
    assert bound < 8 * len(section) < bound + 20 * 8  # lane length, initial and final state


def test_a_sparse_multiset_costs_its_information_bound():
    rng = np.random.default_rng(5)
    symbols = np.where(rng.random((8, 2048)) < 0.7, 0, 1 + np.arange(2048))  # class 0 = zero, others unique
    order = np.argsort(rng.random(symbols.shape), axis=1)
    symbols = np.take_along_axis(symbols, order, axis=1)
    counts = np.stack([np.bincount(row, minlength=2049) for row in symbols])
    bound = sum((math.lgamma(2049) - sum(math.lgamma(m + 1) for m in row)) / math.log(2) for row in counts)
    section = encode(symbols, counts, 1)
    assert bound < 8 * len(section) < bound + 20 * 8


# ---------------------------------------------------------------- what a decoder must reject

def tiny_section():
    return encode(np.array([[2, 0, 1], [2, 0, 1]]), None, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("section,lanes,message", [
    (b"\x02\x00\x00", 1, "section of 3 bytes cannot hold 1 lane lengths and whole 32-bit words"),
    (b"\x02\x00\x00\x00" + bytes(4), 1, "lane lengths add up to 2 words, the section holds 1"),
    (b"\x01\x00\x00\x00" + bytes(4), 1, "lane 0 has 1 words, at least 2 (its final state) are needed"),
    (bytes.fromhex("02000000" "00000000" "ffffffff"), 1, "lane 0 starts with a state below 2^32"),
    (bytes.fromhex("02000000" "23000000" "8faaaa6a") + bytes(4), 1, "lane lengths add up to 2 words"),
    (bytes.fromhex("03000000" "23000000" "8faaaa6a" "00000000"), 1,
     "lane 0 does not end in the initial state 2^32 with every word used"),
    (bytes.fromhex("02000000" "23000000" "8faaaa6b"), 1, "lane 0 runs out of words before its last row"),
    (bytes.fromhex("02000000" "01000000" "00000000"), 1, "lane 0 runs out of words before its last row"),
])
def test_bad_sections_are_refused(backend, section, lanes, message):
    with pytest.raises(FormatError, match="^" + re.escape(f"w: {message}")):
        decode(section, None, 2, 3, lanes, "w", backend)


def test_the_pinned_section_itself_decodes():
    assert decode(tiny_section(), None, 2, 3, 1, "w").tolist() == [[2, 0, 1], [2, 0, 1]]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), lanes=st.integers(1, 3), n=st.integers(0, 9), backend=st.sampled_from(BACKENDS))
def test_any_bytes_decode_to_a_valid_arrangement_or_a_format_error(data, lanes, n, backend):
    rows = 3
    try:
        symbols = decode(data, None, rows, n, lanes, "fuzz", backend)
    except FormatError:
        pass
    else:
        assert all(sorted(row) == list(range(n)) for row in symbols.tolist())
    counts = np.array([[n - n // 2, n // 2]] * rows)
    try:
        symbols = decode(data, counts, rows, n, lanes, "fuzz", backend)
    except FormatError:
        return
    assert all(np.array_equal(np.bincount(row, minlength=2), c) for row, c in zip(symbols, counts))


def test_empty_rows_are_checked_without_walking_them():
    section = bytes.fromhex("02000000" "01000000" "00000000")
    assert decode(section, None, 2**31 - 1, 0, 1, "t").shape == (2**31 - 1, 0)
    with pytest.raises(FormatError, match="lane 0 does not end in the initial state"):
        decode(bytes.fromhex("02000000" "01000000" "00000001"), None, 2**31 - 1, 0, 1, "t")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_tensor_with_huge_rows_encodes_without_allocating_per_position(backend):
    section = bytes.fromhex("02000000" "01000000" "00000000")
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.int64), shape=(0, 2**31), strides=(8, 8))
    assert rans.encode_permutations(huge, 1, backend) == section
    assert rans.encode_arrangement(huge, np.zeros((0, 1), np.int64), 1, backend) == section
    assert rans.decode_permutations(section, 0, 2**31, 1, "t", backend).shape == (0, 2**31)
    assert rans.decode_arrangement(section, np.zeros((0, 1), np.int64), 0, 2**31, 1, "t", backend).shape == (0, 2**31)


def test_an_unknown_backend_in_the_environment_is_named(monkeypatch):
    from permcodec import SpecError
    from permcodec.init import rng
    monkeypatch.setenv("PERMCODEC_BACKEND", "numby")
    with pytest.raises(SpecError, match="PERMCODEC_BACKEND must be 'numba' or 'numpy', found 'numby'"):
        rans.default_backend()
    with pytest.raises(SpecError, match="PERMCODEC_BACKEND must be 'numba' or 'numpy', found 'numby'"):
        rng.compiled_kernel()


@numba_only
def test_the_class_decoder_indexes_nothing_in_a_row_without_elements():
    """A row of length 0 has no class: the row decoder returns before indexing any class array. Run as plain
    Python (numba's ``py_func``), so that an index into the empty arrays raises instead of reading past them."""
    from permcodec.format import _rans_numba

    words = np.array([rans.STATE_LOW >> 32, rans.STATE_LOW & 0xFFFFFFFF], dtype=np.uint32)
    scratch = (np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32),
               np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(2, np.int64))
    state = np.uint64(rans.STATE_LOW)
    assert _rans_numba._decode_class_row.py_func(state, 2, 2, words, np.empty(0, np.int32), np.empty(0, np.int32),
                                                 scratch) == (state, 2, 0)
    section = rans.nothing_coded_section(1)
    assert rans.decode_classes_onto(section, np.zeros((3, 0), np.float32), 1, "t").shape == (3, 0)
