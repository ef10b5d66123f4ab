"""The fused compiled kernels give the torch path's bits: 10^7 values per case, edge parameters included.

numba compiles without fast-math, so it neither fuses a multiply and an add into an FMA nor reorders float
operations; these tests are the proof, not the assumption. The reference is the array path on torch tensors
with PERMCODEC_BACKEND=numpy (the torch Philox and torch float operations: what CUDA runs).
"""

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
