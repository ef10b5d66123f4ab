"""Philox4x32-10: known-answer vectors, torch vs numpy reference, golden stream hash."""

import hashlib

import numpy as np
import pytest
import torch

from permcodec import SpecError, rng

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
    words = rng.philox_rounds_torch(*[torch.tensor([c], dtype=torch.int64) for c in counter], seed_of(key))
    assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize("counter,key,expected", KAT_PHILOX4X32_10)
def test_kat_numpy_reference(counter, key, expected):
    out = rng.philox_numpy(np.array([counter], dtype=np.uint64), seed_of(key))
    assert tuple(int(w) for w in out[0]) == expected


@pytest.mark.parametrize("seed,stream,substream,start", [
    (0, 0, 0, 0), (2**64 - 1, 2**32 - 1, 1, 2**40 - 5), (0xDEADBEEF12345678, 12, 0, 999_999)])
def test_torch_matches_numpy_reference(seed, stream, substream, start):
    count = 70_001  # crosses a CHUNK_BLOCKS boundary
    got = rng.philox_blocks(seed, stream, substream, start, count).numpy().astype(np.uint64)
    assert np.array_equal(got, rng.philox_blocks_numpy(seed, stream, substream, start, count))


def test_counter_layout():
    """Block b of (seed, stream, substream) is Philox of counter (b lo, b hi, stream, substream), key seed."""
    seed, stream, block = 0x1122334455667788, 5, 2**33 + 17
    expected = rng.philox_numpy(np.array([[block & 0xFFFFFFFF, block >> 32, stream, 1]], dtype=np.uint64), seed)
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
