"""Scheme sparse (specs/format.md Section 11a): sections equal a coder written from the spec, both backends and
the torch path decode alike, the worked example is pinned, damaged sections are refused, and the encoder takes it
for sparse pools only."""

import io
import math
import re
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import permcodec
from permcodec import FormatError, arrays, codec, init_
from permcodec.format import rans
from permcodec.format.records import record_parts
from permcodec.format.schemes import INDEX_SCHEMES, RowsToEncode, encode_best, level_named, schemes_to_try
from permcodec.format.schemes.sparse import item_indices
from permcodec.perm import SortedRows

BACKENDS = rans.BACKENDS
SPARSE = INDEX_SCHEMES["sparse"]
M, L = 1 << 31, 1 << 32


# ---------------------------------------------------------------- the spec, in plain Python integers

def spec_symbols(initial: list, trained: list) -> list[tuple[int, int, int]]:
    """(C, m, Q) of every position of a row: the items are the nonzero initial values in position order, a
    trained item is the first unused initial item of its value, found at a[taken + d] and swapped to a[taken]."""
    items = [v for v in initial if v != 0]
    a, used = list(range(len(items))), [False] * len(items)
    k, z, taken, out = len(items), len(initial) - len(items), 0, []
    for p, value in enumerate(trained):
        q = len(initial) - p
        if value == 0:
            out.append((k, z, q))
            z -= 1
            continue
        wanted = next(i for i, v in enumerate(items) if v == value and not used[i])
        used[wanted] = True
        d = a.index(wanted, taken) - taken
        a[taken], a[taken + d] = a[taken + d], a[taken]
        out.append((d, 1, q))
        taken, k = taken + 1, k - 1
    return out


def spec_section(initial_rows, trained_rows, lanes: int) -> bytes:
    """Section 9.2's encoder over Section 11a's symbols: lane j codes rows j, j + lanes, ..."""
    lane_words = []
    for lane in range(lanes):
        x, words = L, []
        for r in reversed(range(lane, len(initial_rows), lanes)):
            for c, m, q in reversed(spec_symbols(list(initial_rows[r]), list(trained_rows[r]))):
                if m == q:
                    continue
                start = c * M // q
                freq = (c + m) * M // q - start
                if x >= freq << 33:
                    words.append(x & 0xFFFFFFFF)
                    x >>= 32
                x = (x // freq) * M + x % freq + start
        lane_words.append((words + [x & 0xFFFFFFFF, x >> 32])[::-1])
    return struct.pack(f"<{lanes}I", *map(len, lane_words)) + b"".join(struct.pack(f"<{len(w)}I", *w)
                                                                        for w in lane_words)


# ---------------------------------------------------------------- rows to code

def sparse_rows(rows, n, density, seed, levels=None):
    """(initial, trained) float32 [rows, n]: values in (-1, 1) (or ``levels`` distinct ones, for ties), zero with
    probability 1 - density, each trained row a shuffle of its initial row."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1, 1, (rows, n)) if levels is None else rng.integers(1, levels + 1, (rows, n)) / 8
    initial = np.where(rng.random((rows, n)) < density, values, 0.0).astype(np.float32)
    trained = np.stack([row[rng.permutation(n)] for row in initial]) if rows else initial.copy()
    return initial, trained


CASES = {
    "70% zeros": sparse_rows(9, 40, 0.3, 1),
    "no zeros": sparse_rows(5, 17, 1.0, 2),
    "only zeros": sparse_rows(4, 12, 0.0, 3),
    "one item a row": (np.eye(6, dtype=np.float32) * 0.5, np.roll(np.eye(6, dtype=np.float32) * 0.5, 2, axis=1)),
    "ties among the items": sparse_rows(7, 30, 0.6, 4, levels=3),
    "rows of one": sparse_rows(6, 1, 0.5, 5),
    "rows of two": sparse_rows(6, 2, 0.5, 6),
    "lanes of unequal rows": sparse_rows(23, 19, 0.3, 7),
    "one long row": sparse_rows(1, 3000, 0.3, 8),
}


def lane_counts(rows):
    return sorted({1, 2, 3, 5, max(rows, 1)} & set(range(1, max(rows, 1) + 1)))


def encode(initial, trained, lanes):
    """The scheme's own encoder, with its lane count forced."""
    tensor = RowsToEncode(SortedRows.of(torch.from_numpy(trained)), SortedRows.of(torch.from_numpy(initial)))
    items = item_indices(tensor.sources, tensor.initial)
    return rans.encode_sparse(items.numpy(), lanes)


@pytest.mark.parametrize("case", CASES)
def test_sections_equal_the_spec_coder(case):
    initial, trained = CASES[case]
    for lanes in lane_counts(initial.shape[0]):
        assert encode(initial, trained, lanes) == spec_section(initial.tolist(), trained.tolist(), lanes)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_decodes_the_trained_bits(case, backend):
    initial, trained = CASES[case]
    for lanes in lane_counts(initial.shape[0]):
        section = encode(initial, trained, lanes)
        decoded = rans.decode_sparse_onto(section, initial.copy(), lanes, "t", backend)
        assert np.array_equal(decoded.view(np.int32), trained.view(np.int32))


@pytest.mark.parametrize("case", CASES)
def test_the_scheme_decodes_alike_on_numpy_and_torch(case):
    """The torch path decodes each position's source on the host and gathers on the device."""
    initial, trained = CASES[case]
    scheme_id, params, section = encode_best(SortedRows.of(torch.from_numpy(trained)),
                                             SortedRows.of(torch.from_numpy(initial)), level_named("fast"),
                                             only="sparse")
    on_numpy = SPARSE.decode(params, initial.copy(), section, "t")
    on_torch = SPARSE.decode(params, torch.from_numpy(initial.copy()), section, "t")
    assert arrays.of(on_torch) is not arrays.NUMPY
    assert np.array_equal(on_numpy.view(np.int32), trained.view(np.int32))
    assert torch.equal(on_torch.view(torch.int32), torch.from_numpy(trained).view(torch.int32))


def test_the_torch_path_numbers_positions_in_uint32(monkeypatch):
    """Its keys are position + 1: an int32 key of a row of 2^31 positions would wrap to a negative number."""
    seen = []
    real = rans.decode_sparse_onto
    monkeypatch.setattr(rans, "decode_sparse_onto", lambda section, keys, *rest: seen.append(keys) or
                        real(section, keys, *rest))
    initial, trained = CASES["70% zeros"]
    decoded = SPARSE.decode({"lanes": 1}, torch.from_numpy(initial.copy()), encode(initial, trained, 1), "t")
    assert torch.equal(decoded.view(torch.int32), torch.from_numpy(trained).view(torch.int32))
    assert seen[0].dtype == np.uint32


@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (0, 0)])
def test_the_torch_path_decodes_tensors_without_elements(shape):
    section = rans.nothing_coded_section(1)
    assert tuple(SPARSE.decode({"lanes": 1}, torch.zeros(shape), section, "t").shape) == shape
    assert SPARSE.decode({"lanes": 1}, np.zeros(shape, np.float32), section, "t").shape == shape


def test_the_kernel_decodes_in_place_of_a_writeable_row():
    initial, trained = CASES["70% zeros"]
    values = initial.copy()
    decoded = rans.decode_sparse_onto(encode(initial, trained, 2), values, 2, "t")
    assert decoded is values


@pytest.mark.parametrize("backend", BACKENDS)
def test_worked_example_is_pinned(backend):
    """specs/format.md Section 11a: initial [0, 0.5, 0, -0.25, 0], trained [-0.25, 0, 0, 0.5, 0]."""
    initial = np.array([[0.0, 0.5, 0.0, -0.25, 0.0]], np.float32)
    trained = np.array([[-0.25, 0.0, 0.0, 0.5, 0.0]], np.float32)
    assert spec_symbols(initial[0].tolist(), trained[0].tolist()) == [(1, 1, 5), (1, 3, 4), (1, 2, 3), (0, 1, 2),
                                                                      (0, 1, 1)]
    section = bytes.fromhex("02000000" "13000000" "1f3333b3")
    assert rans.encode_sparse(np.array([[1, -1, -1, 0, -1]]), 1, backend) == section
    assert rans.decode_sparse_onto(section, initial.copy(), 1, "t", backend).tolist() == trained.tolist()


def test_a_sparse_row_costs_its_information_bound():
    initial, trained = sparse_rows(8, 2048, 0.3, 9)
    zeros = (initial == 0).sum(axis=1)
    bound = sum(math.lgamma(2049) - math.lgamma(int(z) + 1) for z in zeros) / math.log(2)
    assert bound < 8 * len(encode(initial, trained, 1)) < bound + 20 * 8


# ---------------------------------------------------------------- what a decoder must reject

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("section,message", [
    (bytes.fromhex("02000000" "00000000" "ffffffff"), "lane 0 starts with a state below 2^32"),
    (bytes.fromhex("02000000" "13000000" "1f3333b4"), "lane 0 runs out of words before its last row"),
    (bytes.fromhex("03000000" "13000000" "1f3333b3" "00000000"),
     "lane 0 does not end in the initial state 2^32 with every word used (corrupt coding)"),
    (bytes.fromhex("02000000" "13000000" "1f3333b3" "00"),
     "section of 13 bytes cannot hold 1 lane lengths and whole 32-bit words"),
])
def test_damaged_sections_are_refused(backend, section, message):
    initial = np.array([[0.0, 0.5, 0.0, -0.25, 0.0]], np.float32)
    with pytest.raises(FormatError, match="^" + re.escape(f"w: {message}") + "$"):
        rans.decode_sparse_onto(section, initial, 1, "w", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_lane_is_named_among_many(backend):
    initial, trained = CASES["lanes of unequal rows"]
    section = bytearray(encode(initial, trained, 5))
    lengths = struct.unpack_from("<5I", section)
    section[4 * 5 + 4 * sum(lengths[:3]) + 5] ^= 0x40  # inside lane 3's first state
    with pytest.raises(FormatError, match=r"^w: lane 3 "):
        rans.decode_sparse_onto(bytes(section), initial.copy(), 5, "w", backend)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), lanes=st.integers(1, 3), n=st.integers(0, 9), backend=st.sampled_from(BACKENDS))
def test_any_bytes_decode_to_an_arrangement_of_the_row_or_a_format_error(data, lanes, n, backend):
    initial, _ = sparse_rows(3, n, 0.5, n)
    try:
        decoded = rans.decode_sparse_onto(data, initial.copy(), lanes, "fuzz", backend)
    except FormatError:
        return
    assert np.array_equal(np.sort(decoded.view(np.int32), axis=1), np.sort(initial.view(np.int32), axis=1))


def test_empty_tensors_are_checked_without_walking_rows():
    section = bytes.fromhex("02000000" "01000000" "00000000")
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(2**31 - 1, 0), strides=(4, 4))
    assert rans.decode_sparse_onto(section, huge, 1, "t").shape == (2**31 - 1, 0)
    with pytest.raises(FormatError, match="lane 0 does not end in the initial state"):
        rans.decode_sparse_onto(bytes.fromhex("02000000" "01000000" "00000001"), huge, 1, "t")
    assert rans.encode_sparse(np.zeros((0, 2**31), np.int64)[:, :0], 1) == section


# ---------------------------------------------------------------- which scheme the encoder takes

def schemes_of(data: bytes) -> dict[str, set]:
    """Each permuted tensor's schemes, read from the bytes (as test_codec's chosen_schemes, parts included)."""
    header = permcodec.PCFile(io.BytesIO(data)).header
    return {r["name"]: {part.scheme for part in record_parts(r)} for r in header["tensors"] if r["kind"] == "permuted"}


@pytest.mark.parametrize("level", ["fast", "default", "max"])
@pytest.mark.parametrize("dist,options,expected", [
    ("sparse", {"density": 0.3}, "sparse"),
    ("shared", {"density": 0.3, "value": 0.5}, "multiset"),
    ("levels", {"num_levels": 4}, "multiset"),
    ("he_uniform", {}, "exact"),
])
def test_the_encoder_takes_sparse_for_sparse_pools_only(level, dist, options, expected):
    model = torch.nn.Linear(300, 8)
    spec = init_(model, seed=3, dist=dist, **options)
    with torch.no_grad():
        model.weight.copy_(model.weight.flip(1))
    found = schemes_of(codec.encode(model, spec, level=level))["weight"]
    assert found == {expected} or (level != "fast" and expected == "exact" and found <= {"exact", "delta"})


def test_sparse_replaces_multiset_only_within_its_share():
    level = level_named("default")
    assert [s.id for s in schemes_to_try(level, 0.5, 0.001)] == ["exact", "sparse", "delta"]
    assert [s.id for s in schemes_to_try(level, 0.5, 0.0011)] == ["exact", "multiset", "delta"]
    assert [s.id for s in schemes_to_try(level_named("fast"), 0.5, 0.0)] == ["sparse"]
    assert [s.id for s in schemes_to_try(level, 0.005, 0.0)] == ["exact", "delta"]
