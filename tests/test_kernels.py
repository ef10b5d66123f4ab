"""The fused compiled kernels give the torch path's bits: 10^7 values per case, edge parameters included; the
compiled decoders of delta and multiset give the array path's bits and errors, and their division-free quotient
is the integer one.

numba compiles without fast-math, so it neither fuses a multiply and an add into an FMA nor reorders float
operations; these tests are the proof, not the assumption. The reference is the array path on torch tensors
with PERMCODEC_BACKEND=numpy (the torch Philox and torch float operations: what CUDA runs).
"""

import hashlib

import numpy as np
import pytest

from permcodec import SpecError, arrays
from permcodec.bits import tensor_bytes
from permcodec.init import distributions as D
from permcodec.init.rng import compiled_kernel

pytestmark = pytest.mark.skipif(compiled_kernel() is None, reason="numba is not installed")

VALUES = 10_000_000
CHUNK = 1 << 21  # bounds the reference's float64 temporaries
START = 2**33 + 1  # odd, far into the stream: the first element is the second of its block
TORCH_CPU = arrays.TorchArrays("cpu")

UNIFORM_CASES = {  # (low, high) as stored float32
    "he_uniform": (-0.0589, 0.0589), "unit": (0.0, 1.0), "offset": (-2.0, 3.0),
    "subnormal": (1e-40, 3e-40), "around_zero_subnormal": (-2e-39, 1e-39), "huge": (-3e38, 3e38),
    "narrow": (1.0, 1.0 + 2.0**-20), "all_negative": (-7.5, -7.25),
}


def stored(x: float) -> float:
    return D.to_float32(x)


def assert_ten_million_equal(monkeypatch, fused_values, dist: str, params: dict, seed: int, stream: int):
    """``fused_values(start, count)`` against ``sample`` on the torch path, chunk by chunk over VALUES values."""
    for first in range(0, VALUES, CHUNK):
        count = min(CHUNK, VALUES - first)
        fused = fused_values(START + first, count)
        monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
        reference = D.sample(dist, params, seed, stream, START + first, count, TORCH_CPU)
        monkeypatch.delenv("PERMCODEC_BACKEND")
        assert tensor_bytes(fused) == tensor_bytes(reference), f"values {first}..{first + count} differ"


@pytest.mark.parametrize("case", list(UNIFORM_CASES))
def test_fused_uniform_equals_the_torch_path_on_ten_million_values(monkeypatch, case):
    from permcodec.init import _uniform_numba

    low, high = map(stored, UNIFORM_CASES[case])
    seed, stream = 0x9E3779B97F4A7C15, 4
    assert_ten_million_equal(monkeypatch, lambda start, count: _uniform_numba.uniform_values(
        seed, stream, start, count, low, high), "uniform", {"low": low, "high": high}, seed, stream)


# Word chunks (1,024 Philox blocks, 2,048 values) are counted from a range's first block: the counts end a range on
# either side of a chunk's edge and of a block's, from an even and an odd start; 2^18 + 3 values are drawn in pieces
# on the pool (``parallel.run_over``), each piece from its own first block.
CHUNK_EDGES = {"starts": (0, 1, 2048, START), "counts": (1, 2, 3, 2047, 2048, 2049, 4096, 6145, 2**18 + 3)}


def chunk_edge_draws() -> list:
    """``uniform_values`` of every start and count of CHUNK_EDGES."""
    from permcodec.init import _uniform_numba

    low, high = map(stored, UNIFORM_CASES["he_uniform"])
    return [(start, count, _uniform_numba.uniform_values(11, 12, start, count, low, high))
            for start in CHUNK_EDGES["starts"] for count in CHUNK_EDGES["counts"]]


def test_fused_uniform_equals_the_torch_path_at_every_edge_of_a_word_chunk(monkeypatch):
    """The kernel converts a chunk in one vectorized loop where all of it lands in the output, else value by
    value."""
    low, high = map(stored, UNIFORM_CASES["he_uniform"])
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    for start, count, fused in chunk_edge_draws():
        reference = D.sample("uniform", {"low": low, "high": high}, 11, 12, start, count, TORCH_CPU)
        assert tensor_bytes(fused) == tensor_bytes(reference), f"start {start}, count {count}"


def chunk_edge_digest() -> str:
    return hashlib.sha256(b"".join(values.tobytes() for _, _, values in chunk_edge_draws())).hexdigest()


def test_the_fused_uniform_draw_stays_within_its_output(bounds_checked):
    """The kernel compiled with numba's bounds checks draws every range of CHUNK_EDGES to the same bytes."""
    stdout = bounds_checked("from test_kernels import chunk_edge_digest\nprint(chunk_edge_digest())")
    assert stdout.split() == [chunk_edge_digest()]


NORMAL_CASES = {  # (mean, std) as stored float32
    "standard": (0.0, 1.0), "he_normal": (0.0, 0.0589), "offset": (0.5, 2.0), "subnormal_std": (0.0, 1e-42),
    "subnormal_mean": (5e-40, 1e-40), "huge": (1e3, 1e30), "negative_mean": (-3.25, 0.125),
}


@pytest.mark.parametrize("case", list(NORMAL_CASES))
def test_fused_normal_equals_the_torch_path_on_ten_million_values(monkeypatch, case):
    from permcodec.init import _normal_numba

    mean, std = map(stored, NORMAL_CASES[case])
    seed, stream = 2**64 - 1, 2**32 - 1  # the largest key and stream
    assert_ten_million_equal(monkeypatch, lambda start, count: _normal_numba.normal_values(
        seed, stream, start, count, mean, std), "normal", {"mean": mean, "std": std}, seed, stream)


def test_fused_values_are_canonical_and_hit_both_ends_of_a_tiny_range():
    from permcodec.init import _uniform_numba

    low, high = stored(-1e-45), stored(1e-45)  # the smallest subnormals: many values round to -0.0 in float64 math
    values = _uniform_numba.uniform_values(5, 6, 0, 100_000, low, high)
    bits = values.view(np.uint32)
    assert not (bits == 0x80000000).any(), "a -0.0 was left"
    assert set(np.unique(values).tolist()) == {-(2.0**-149), 0.0, 2.0**-149}


@pytest.mark.parametrize("dist,user", [("he_uniform", {}), ("sparse", dict(density=1e-6)),
                                       ("sparse", dict(density=0.999999)), ("glorot_uniform", {}),
                                       ("he_normal", {}), ("sparse", dict(density=0.3, base="glorot_normal"))])
def test_sampling_through_the_fused_kernel_equals_the_torch_path(monkeypatch, dist, user):
    params = D.make_params(dist, (512, 300), **user)
    from permcodec.init import _normal_numba, _uniform_numba  # noqa: F401 (numba loaded: the compiled path)

    fused = D.sample(dist, params, 77, 3, 12_345, 1_000_003, arrays.NUMPY)
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    assert tensor_bytes(fused) == tensor_bytes(D.sample(dist, params, 77, 3, 12_345, 1_000_003, TORCH_CPU))


@pytest.mark.parametrize("start,count", [(-2, 4), (2**63 - 1, 2)])
def test_a_range_outside_the_stream_is_refused_on_every_path(start, count):
    for dist, params in (("normal", {"mean": 0.0, "std": 1.0}), ("uniform", {"low": 0.0, "high": 1.0})):
        for device in (arrays.NUMPY, TORCH_CPU):
            with pytest.raises(SpecError, match=r"^element range \[.*\) is outside \[0, 2\*\*63\)$"):
                D.sample(dist, params, 1, 2, start, count, device)


def test_delta_entropy_counts_uint64_codes():
    """zigzag gives uint64 codes, which numpy 1.x's bincount refuses without a cast."""
    from permcodec.format.schemes.delta import entropy_bits

    assert entropy_bits(np.array([0, 1, 2, 3], dtype=np.uint64)) == 8.0


MASK_CASES = {"density 0.3": 0.3, "density near 0": 1e-6, "density near 1": 0.999999, "all kept": 1.0}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_the_compiled_keep_mask_equals_the_torch_path_on_ten_million_values(monkeypatch, case):
    from permcodec.init import _mask_numba

    params = D.make_params("shared", (1000, 10_000), value=-0.75, density=MASK_CASES[case])
    seed, stream = 0x0123456789ABCDEF, 9
    assert_ten_million_equal(monkeypatch, lambda start, count: _mask_numba.zero_unkept(
        np.full(count, -0.75, np.float32), seed, stream, start, params["keep_below"]), "shared", params, seed, stream)


def test_the_scaled_quotient_is_the_integer_quotient():
    """floor(c 2^31 / Q) from a float64 reciprocal: every c of every Q up to 1,024, and 10^7 random pairs up to
    Q = 2^31, against Python's integer division."""
    from numba import njit

    from permcodec.format._rans_numba import _SCALE, _scaled_quotient

    @njit
    def mismatches(cs, lefts):
        wrong = 0
        for i in range(cs.shape[0]):
            wrong += _scaled_quotient(cs[i], lefts[i], _SCALE / lefts[i]) != (cs[i] << 31) // lefts[i]
        return wrong

    sizes = np.arange(2, 1026)  # Q = 1 .. 1,024, each with its Q + 1 values of c
    every_q = np.repeat(np.arange(1, 1025), sizes)
    every_c = np.arange(every_q.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    assert mismatches(every_c, every_q) == 0
    for seed in range(10):  # 10^7 random pairs, 10^6 at a time (the suite's memory budget)
        rng = np.random.default_rng(seed)
        lefts = rng.integers(1, 2**31 + 1, 1_000_000)
        assert mismatches(np.minimum((rng.random(lefts.size) * (lefts + 1)).astype(np.int64), lefts), lefts) == 0
    edges = np.array([1, 2, 3, 2**30 + 1, 2**31 - 1, 2**31], np.int64)
    assert mismatches(np.concatenate([0 * edges, edges - 1, edges]), np.tile(edges, 3)) == 0


def rows_with_ties(rows: int, n: int, seed: int) -> np.ndarray:
    """float32 rows drawn from few values (many ties), with both signs, as level and shared pools have."""
    values = np.array([-2.5, -1e-40, 0.0, 1e-45, 0.75, 3e38], np.float32)
    return np.random.default_rng(seed).choice(values, size=(rows, n))


def decode_both_ways(monkeypatch, scheme_id: str, params: dict, initial: np.ndarray, section: bytes):
    """(compiled result or error, array-path result or error) of one scheme's decode on numpy."""
    from permcodec.format import schemes

    def attempt():
        try:
            return tensor_bytes(schemes.INDEX_SCHEMES[scheme_id].decode(params, initial.copy(), section, "t"))
        except Exception as err:  # noqa: BLE001 - the two paths must fail alike, whatever the error
            return f"{type(err).__name__}: {err}"

    compiled = attempt()
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    reference = attempt()
    monkeypatch.delenv("PERMCODEC_BACKEND")
    return compiled, reference


def moved_rows(initial: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Each row of ``initial`` permuted: shuffled completely (fraction 1), or with about ``fraction`` of its
    positions swapped with their right-hand neighbours (light training)."""
    rng = np.random.default_rng(seed)
    if fraction == 1.0:
        return np.take_along_axis(initial, np.argsort(rng.random(initial.shape), axis=1), axis=1)
    moved = initial.copy()
    for row in moved:
        for j in np.flatnonzero(rng.random(row.size - 1) < fraction):
            row[j], row[j + 1] = row[j + 1], row[j]
    return moved


@pytest.mark.parametrize("rows,n,moved", [(40, 300, 1.0), (7, 5000, 0.01), (33, 2, 0.5), (1, 1, 0.0)])
def test_compiled_delta_decoding_equals_the_array_path(monkeypatch, rows, n, moved):
    """Same bits from the same sections, ties and light training included; corrupt sections fail alike."""
    import torch

    from permcodec.format.schemes import delta as delta_scheme
    from permcodec.format.schemes.base import RowsToEncode
    from permcodec.perm import SortedRows

    initial = rows_with_ties(rows, n, rows + n)
    initial[:, :n // 2] = np.random.default_rng(1).standard_normal((rows, n // 2)).astype(np.float32)
    trained = moved_rows(initial, moved, 2)
    codes = RowsToEncode(SortedRows.of(torch.from_numpy(trained)), SortedRows.of(torch.from_numpy(initial))).delta_codes
    section = delta_scheme.encode_delta(codes, n, 3)
    compiled, reference = decode_both_ways(monkeypatch, "delta", {}, initial, section)
    assert compiled == reference == tensor_bytes(trained)
    errors = set()
    largest = 256 ** delta_scheme.index_width(n) - 1
    for code in (2, 2 * n, largest):  # a rank moved by one (a duplicate unless n = 1), outside the row, far outside
        bad = codes.copy()
        bad[len(bad) // 2] = code
        compiled, reference = decode_both_ways(monkeypatch, "delta", {}, initial, delta_scheme.encode_delta(bad, n, 3))
        assert compiled == reference
        errors.add(compiled.rsplit(" ", 1)[-1])
    assert errors == ({"permutation", f"{n})"} if n > 1 else {f"{n})"})


@pytest.mark.parametrize("special", [[], [-0.0, 0.0], [np.inf, -np.inf, 1e-45, -1e-45], [np.nan, -np.nan, 1.0]])
def test_delta_sort_keys_give_the_stable_argsort(special):
    """The compiled delta path orders each initial row by sorting keys (order-preserving bits above the
    position): numpy's stable argsort, -0.0 tied with +0.0; a row with a NaN is reported, for the caller to
    sort the stable way."""
    from permcodec.format import _delta_numba

    rng = np.random.default_rng(len(special))
    rows = rows_with_ties(30, 200, 9)
    for r, row in enumerate(rows[::3]):
        row[rng.choice(200, len(special), replace=False)] = special
    keys, has_nan = _delta_numba.sort_keys(rows)
    assert has_nan == bool(np.isnan(rows).any())
    if not has_nan:
        keys.sort(axis=1)
        assert np.array_equal((keys & np.uint64(0xFFFFFFFF)).astype(np.int64),
                              np.argsort(rows, axis=1, kind="stable"))


@pytest.mark.parametrize("rows,n,distinct", [(40, 576, 2 ** 32), (30, 200, 9), (5, 2, 2), (3, 3000, 1),
                                              (2, 70000, 2 ** 32)])
def test_the_radix_sort_of_delta_keys_equals_numpys_sort(rows, n, distinct):
    """``sort_key_rows`` (the batch kernel's sort) gives numpy's sorted keys: ties in value stay in position
    order, whatever bytes of the value differ, for rows of 2 to 70,000. These keys are not the values of a
    pool (NaN bit patterns, few distinct values): they take the radix sort, not the bucket sort."""
    from permcodec.format import _delta_numba

    rng = np.random.default_rng(n)
    values = rng.integers(0, distinct, (rows, n), dtype=np.uint64)
    if distinct == 2 ** 32:
        values[:, ::7] = values[:, :1]  # ties across the whole row, and values differing in every byte
    keys = (values << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    expected = np.sort(keys, axis=1)
    _delta_numba.sort_key_rows(keys)
    assert np.array_equal(keys, expected)


def bucket_moves(keys: np.ndarray) -> list[int]:
    """The insertion moves ``_bucket_sort_row`` made to sort each row of ``keys`` in place, or -1 where it left
    the row as it was."""
    from permcodec.format import _delta_numba

    rows, n = keys.shape
    scratch, counts = np.empty(n, np.uint64), np.empty(max(n, 256), np.int64)
    bits, buckets = np.empty(n + 2, np.uint32), np.empty(n, np.int64)
    return [_delta_numba._bucket_sort_row(keys[r], scratch, counts, bits, buckets) for r in range(rows)]


def spread_rows(case: str, rows: int, n: int) -> np.ndarray:
    """float32 rows of one kind: ``uniform`` (a batch's pools: ties, -0.0 and +0.0 planted), ``descending``, a
    ``huge`` or a ``subnormal`` range, a ``lopsided`` row (one value far from a cluster), ``equal`` or
    ``two``-valued rows, or a row with an ``inf``."""
    rng = np.random.default_rng(n)
    bounds = {"huge": (-3e38, 3e38), "subnormal": (-3e-40, 2e-40)}.get(case, (-0.0589, 0.0589))
    values = rng.uniform(*bounds, (rows, n)).astype(np.float32)
    if case == "uniform":
        values[:, ::97] = values[:, 1:2]
        values[:, 2], values[:, 3] = -0.0, 0.0
    elif case == "descending":
        values = -np.sort(-values, axis=1)
    elif case == "lopsided":
        values[:, 0] = 1e30
    elif case in ("equal", "two"):
        values[:] = np.float32(0.5)
        values[:, ::2] = np.float32(0.5 if case == "equal" else -0.25)
    elif case == "inf":
        values[:, -1] = np.inf
    return values


@pytest.mark.parametrize("case,served", [("uniform", True), ("descending", True), ("huge", True), ("subnormal", True),
                                         ("lopsided", False), ("equal", False), ("two", False), ("inf", False)])
@pytest.mark.parametrize("n", [144, 577, 4096])
def test_the_bucket_sort_of_delta_keys_equals_numpys_sort(case, served, n):
    """The batch kernel sorts a row's keys by buckets between its least and greatest value where that serves (a
    row of about uniform values), moving each key at most 2 n times in all, else it leaves the row to the
    radix sort: either way numpy's sorted keys."""
    from permcodec.format import _delta_numba

    values = spread_rows(case, 6, n)
    keys, has_nan = _delta_numba.sort_keys(values)
    expected = np.sort(keys, axis=1)
    attempt = keys.copy()
    moves = bucket_moves(attempt)
    assert all(0 <= count <= 2 * n for count in moves) if served else moves == [-1] * 6
    assert case != "descending" or min(moves) > 0  # keys sharing a bucket came in descending order
    assert np.array_equal(attempt, expected if served else keys)
    _delta_numba.sort_key_rows(keys)
    assert not has_nan and np.array_equal(keys, expected)


def test_rows_past_the_bucket_sorts_limit_take_the_radix_sort():
    """A row of BUCKET_SORT_MAX keys is sorted by buckets, one key longer by the radix sort (the bucket sort is
    no faster there): numpy's sorted keys either way."""
    from permcodec.format import _delta_numba

    for n, served in ((_delta_numba.BUCKET_SORT_MAX, True), (_delta_numba.BUCKET_SORT_MAX + 1, False)):
        keys, _ = _delta_numba.sort_keys(spread_rows("uniform", 3, n))
        expected = np.sort(keys, axis=1)
        assert (min(bucket_moves(keys.copy())) >= 0) == served
        _delta_numba.sort_key_rows(keys)
        assert np.array_equal(keys, expected)


def test_the_bucket_sort_of_short_rows_equals_numpys_sort():
    """Rows of 2 to 9 keys, most of them sorted by buckets: numpy's sorted keys."""
    from permcodec.format import _delta_numba

    for n in range(2, 10):
        values = np.random.default_rng(n).uniform(-1.0, 1.0, (500, n)).astype(np.float32)
        keys, _ = _delta_numba.sort_keys(values)
        expected = np.sort(keys, axis=1)
        assert sum(count >= 0 for count in bucket_moves(keys.copy())) > 250
        _delta_numba.sort_key_rows(keys)
        assert np.array_equal(keys, expected)


@pytest.mark.parametrize("dist,rows,n", [("sparse", 12, 400), ("shared", 4, 1500), ("ties", 50, 64), ("ties", 3, 2)])
def test_compiled_multiset_decoding_equals_the_array_path(monkeypatch, dist, rows, n):
    """Classes found from the sorted pool and decoded straight to values: the array path's bits from the same
    sections, and its errors from corrupt ones."""
    import torch

    from permcodec.format import schemes
    from permcodec.format.schemes.base import RowsToEncode
    from permcodec.perm import SortedRows

    if dist == "ties":
        initial = rows_with_ties(rows, n, 5)
    else:
        params = D.make_params(dist, (rows, n), **({"value": 0.5, "density": 0.08} if dist == "shared" else
                                                   {"density": 0.3}))
        initial = D.sample(dist, params, 3, 1, 0, rows * n, arrays.NUMPY).reshape(rows, n)
    trained = moved_rows(initial, 1.0, 6)
    level = schemes.LEVELS["default"]
    params, section = schemes.INDEX_SCHEMES["multiset"].encode(
        RowsToEncode(SortedRows.of(torch.from_numpy(trained)), SortedRows.of(torch.from_numpy(initial))), level)
    compiled, reference = decode_both_ways(monkeypatch, "multiset", params, initial, section)
    assert compiled == reference == tensor_bytes(trained)
    lanes = params["lanes"]
    for at in (4 * lanes, len(section) // 2, len(section) - 4):  # the first word, a middle one, the last
        corrupt = bytearray(section)
        corrupt[at] ^= 0x5A
        compiled, reference = decode_both_ways(monkeypatch, "multiset", params, initial, bytes(corrupt))
        assert compiled == reference and compiled.startswith("FormatError: t: lane ")
