"""Philox4x32-10: known-answer vectors, torch vs numpy reference, golden stream hash."""

import hashlib

import numpy as np
import pytest
import torch

from permcodec import SpecError
from permcodec.init import _philox_arrays, philox, rng

# Known-answer vectors from DEShawResearch/random123, tests/kat_vectors
# (lines "philox4x32 10 <ctr0..3> <key0..1> <expected0..3>").
KAT_PHILOX4X32_10 = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# SHA-256 of the first 10^6 words (little-endian uint32, block order) of seed
# 0x0123456789ABCDEF, stream 7, substream 0. Guards the stream across versions.
GOLDEN_SEED, GOLDEN_STREAM = 0x0123456789ABCDEF, 7
GOLDEN_10E6_WORDS = "72f3b054705bc3020457755fe9326a90cf6c50ec134a65ac3d86df4406d97e90"


def seed_of(key):
    return key[0] | (key[1] << 32)


@pytest.mark.parametrize("counter,key,expected", KAT_PHILOX4X32_10)
def test_kat_torch(counter, key, expected):
    words = _philox_arrays.philox_rounds(*[torch.tensor([c], dtype=torch.int64) for c in counter], seed_of(key))
    assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize("counter,key,expected", KAT_PHILOX4X32_10)
def test_kat_numpy_reference(counter, key, expected):
    out = philox.philox_numpy(np.array([counter], dtype=np.uint64), seed_of(key))
    assert tuple(int(w) for w in out[0]) == expected


# Block ranges crossing CHUNK_BLOCKS (65536) boundaries at odd starts, the 32-bit carry into c1
# (2^32 lies inside the second chunk of the second case) and the top of the block range.
TORCH_RANGES = [
    (0, 0, 0, 0, 70_001),
    (0xDEADBEEF12345678, 12, 0, 12_345, 2 * 65_536 + 777),
    (2**64 - 1, 2**32 - 1, 1, 2**32 - 70_003, 2 * 65_536 + 5),
    (0x0123456789ABCDEF, 7, 1, 2**32 - 3, 65_536 + 11),
    (1, 2**31, 0, 2**40 + 7, 3 * 65_536 - 1),
    (2**63 + 5, 3, 1, 2**63 - 65_536 - 10, 65_536 + 9),  # up to block 2^63 - 2
]


def torch_path_blocks(monkeypatch, seed, stream, substream, start, count):
    """philox_blocks with the numba kernel switched off, counting the passes of the torch int64 rounds."""
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    assert rng.compiled_kernel() is None
    passes = []
    real_rounds = _philox_arrays.philox_rounds

    def counted(c0, *rest):
        passes.append(c0.numel())
        return real_rounds(c0, *rest)

    monkeypatch.setattr(_philox_arrays, "philox_rounds", counted)
    words = rng.philox_blocks(seed, stream, substream, start, count)
    full, tail = divmod(count, _philox_arrays.CHUNK_BLOCKS)
    assert passes == [_philox_arrays.CHUNK_BLOCKS] * full + ([tail] if tail else [])
    return words


@pytest.mark.parametrize("seed,stream,substream,start,count", TORCH_RANGES)
def test_torch_matches_numpy_reference(monkeypatch, seed, stream, substream, start, count):
    """The torch int64 path (what CUDA runs) on the CPU, over several chunks, word for word."""
    assert _philox_arrays.CHUNK_BLOCKS == 65_536 and count > _philox_arrays.CHUNK_BLOCKS
    got = torch_path_blocks(monkeypatch, seed, stream, substream, start, count).numpy().astype(np.uint64)
    assert np.array_equal(got, philox.philox_blocks_numpy(seed, stream, substream, start, count))


def test_torch_path_reaches_the_last_block(monkeypatch):
    """torch.arange(start, start + n) would need the exclusive end 2^63, which overflows int64 (a bug once)."""
    start, count = 2**63 - 65_536 - 9, 65_536 + 9
    got = torch_path_blocks(monkeypatch, 5, 3, 1, start, count).numpy().astype(np.uint64)
    assert np.array_equal(got, philox.philox_blocks_numpy(5, 3, 1, start, count))


@pytest.mark.parametrize("seed,stream,substream,start", [
    (0, 0, 0, 12_345), (2**64 - 1, 2**32 - 1, 1, 2**32 - 3), (0xDEADBEEF12345678, 12, 0, 2**40 + 7)])
def test_torch_rounds_match_numpy_rounds_on_raw_counters(seed, stream, substream, start):
    """philox_rounds itself, on counters with every bit pattern of c0 near the 2^32 carry."""
    index = np.arange(start, start + 5000, dtype=np.uint64)
    counter = np.stack([index & np.uint64(0xFFFFFFFF), index >> np.uint64(32),
                        np.full(5000, stream, np.uint64), np.full(5000, substream, np.uint64)], axis=1)
    words = _philox_arrays.philox_rounds(*[torch.from_numpy(counter[:, i].astype(np.int64)) for i in range(4)], seed)
    got = torch.stack(words, dim=1).numpy().astype(np.uint64)
    assert np.array_equal(got, philox.philox_numpy(counter, seed))


@pytest.mark.skipif(rng.compiled_kernel() is None, reason="numba is not installed")
@pytest.mark.parametrize("seed,stream,substream,start,count", TORCH_RANGES)
def test_compiled_matches_numpy_reference(seed, stream, substream, start, count):
    got = rng.philox_blocks(seed, stream, substream, start, count).numpy().astype(np.uint64)
    assert np.array_equal(got, philox.philox_blocks_numpy(seed, stream, substream, start, count))


def test_counter_layout():
    """Block b of (seed, stream, substream) is Philox of counter (b lo, b hi, stream, substream), key seed."""
    seed, stream, block = 0x1122334455667788, 5, 2**33 + 17
    expected = philox.philox_numpy(np.array([[block & 0xFFFFFFFF, block >> 32, stream, 1]], dtype=np.uint64), seed)
    got = rng.philox_blocks(seed, stream, 1, block, 1).numpy().astype(np.uint64)
    assert np.array_equal(got, expected)


def test_golden_first_million_words():
    words = rng.philox_blocks(GOLDEN_SEED, GOLDEN_STREAM, 0, 0, 250_000)
    assert hashlib.sha256(words.numpy().astype("<u4").tobytes()).hexdigest() == GOLDEN_10E6_WORDS


def test_any_block_range_is_a_slice_of_the_stream():
    whole = rng.philox_blocks(3, 4, 0, 0, 1000)
    assert torch.equal(rng.philox_blocks(3, 4, 0, 123, 456), whole[123:579])


def test_empty_range():
    assert rng.philox_blocks(1, 1, 0, 10, 0).shape == (0, 4)


@pytest.mark.parametrize("seed,message", [
    (-1, "seed must be an integer in [0, 2**64), found -1"),
    (2**64, f"seed must be an integer in [0, 2**64), found {2**64}"),
    (1.5, "seed must be an integer in [0, 2**64), found float 1.5"),
    (True, "seed must be an integer in [0, 2**64), found bool True"),
])
def test_bad_seed(seed, message):
    with pytest.raises(SpecError) as err:
        rng.philox_blocks(seed, 0, 0, 0, 1)
    assert str(err.value) == message


def test_bad_stream():
    with pytest.raises(SpecError, match=r"stream must be an integer in \[0, 2\*\*32\), found 4294967296"):
        rng.philox_blocks(0, 2**32, 0, 0, 1)


def test_block_range_past_int64():
    with pytest.raises(SpecError, match=r"outside \[0, 2\*\*63\)"):
        rng.philox_blocks(0, 0, 0, 2**63 - 1, 2)


@pytest.mark.skipif(rng.compiled_kernel() is None, reason="numba is not installed")
@pytest.mark.parametrize("seed,stream,substream,start,count", [
    (0, 0, 0, 0, 1), (2**64 - 1, 2**32 - 1, 1, 2**32 - 3, 7), (123, 4, 0, 10**12, 1000), (5, 6, 1, 0, 0),
])
def test_compiled_philox_gives_the_torch_words(monkeypatch, seed, stream, substream, start, count):
    compiled = rng.philox_blocks(seed, stream, substream, start, count)
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    assert rng.compiled_kernel() is None
    assert torch.equal(compiled, rng.philox_blocks(seed, stream, substream, start, count))
