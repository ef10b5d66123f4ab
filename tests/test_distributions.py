"""Distributions: golden bits, canonical output, parameter derivation and validation, exact-math accuracy."""

import hashlib
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from permcodec import SpecError
from permcodec.init import distributions as D
from permcodec.init import exactmath

GOLDEN_SHAPE = (64, 3, 5, 5)
GOLDEN_CASES = {
    "uniform": (dict(low=-2.0, high=3.0), "5feeffb584a67dfc6eeb7648ab6f7574ab156cc571484b6305b8226f409db342"),
    "normal": (dict(mean=0.5, std=2.0), "8456cca16db47724712850ca0fa1686ff8c3a6458f3b7a7ab4983baedcc20241"),
    "he_uniform": ({}, "7f260c8f2d45e0cd35db55ad29cc60f07ed967aa2f051d42cb23fdc62cd8cfe9"),
    "glorot_uniform": ({}, "0330e31091af0136b1620e50ed527242fdcf54f20bd729381fd6aedaf52cc30b"),
    "he_normal": ({}, "3da0d1498d6aadf2b0373b610b5feb67836e1473af627d341e371b479b7be363"),
    "glorot_normal": ({}, "50ccdc560a3b56e7f565c7a06da8ef96e1e050235636218da8b7aefd789ea232"),
    "sparse": (dict(density=0.3, base="he_normal"),
               "8e5dbb9f34c03c2c26b7fd2e134fb0d5521040876b02f9296a9e6260b0740843"),
    "shared": (dict(value=-0.75, density=0.08), "8169f4f1cb4d5640658eb8e8870c5388cc054de745b8e7d65bf041cead38aa3d"),
}


def sha256_bits(t):
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


# specs/rng.md §8.3, revision 1.4: level pools with the shape's row length, and the row orders of §6.7
LEVEL_CASES = [(dict(num_levels=8), "876cc287fc2049983dcdb447f748503f325c684a14fe8e338c4f84b8798d6b6a"),
               (dict(num_levels=5, base="he_normal"), "c9419bbae97862f34a5e391e7000db9e6fa26555e7717db2c65d47b7e30bc11c")]
ROW_ORDERS_SHA256 = "a7eb77917085a4d56d115fe9afb496750477cb68133355665cfb546cc378f01c"


@pytest.mark.parametrize("user,digest", LEVEL_CASES)
def test_golden_level_pools(user, digest):
    params = D.make_params("levels", GOLDEN_SHAPE, **user)
    assert sha256_bits(D.sample("levels", params, 2020, 11, 0, 100_000, row_length=75)) == digest


def test_golden_row_orders():
    from permcodec.init.philox import SUBSTREAM_BLOCKS

    orders = D.row_orders(2020, 11, SUBSTREAM_BLOCKS, 0, 1000, 100, "cpu")
    assert orders[0, :8].tolist() == [0, 41, 87, 67, 66, 52, 70, 76]
    assert hashlib.sha256(orders.to(torch.int32).numpy().astype("<u4").tobytes()).hexdigest() == ROW_ORDERS_SHA256


@pytest.mark.parametrize("dist", list(GOLDEN_CASES))
def test_golden_bits(dist):
    user, digest = GOLDEN_CASES[dist]
    params = D.make_params(dist, GOLDEN_SHAPE, **user)
    assert sha256_bits(D.sample(dist, params, 2020, 11, 0, 100_000)) == digest


@pytest.mark.parametrize("dist", list(GOLDEN_CASES))
def test_outputs_canonical_and_sliceable(dist):
    params = D.make_params(dist, GOLDEN_SHAPE, **GOLDEN_CASES[dist][0])
    whole = D.sample(dist, params, 5, 1, 0, 50_001)
    assert not torch.isnan(whole).any()
    assert not (torch.signbit(whole) & (whole == 0)).any(), "-0.0 in output"
    for start, count in [(1, 7), (2, 9), (3, 1), (49_990, 11)]:
        part = D.sample(dist, params, 5, 1, start, count)
        assert torch.equal(part.view(torch.int32), whole[start:start + count].view(torch.int32))


def test_chunked_sampling_matches_single_chunk(monkeypatch):
    params = D.make_params("normal", (10,))
    whole = D.sample("normal", params, 9, 2, 3, 10_000)
    monkeypatch.setattr(D, "CHUNK_ELEMENTS", 999)
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")  # the array path draws in chunks; the compiled one does not
    assert torch.equal(D.sample("normal", params, 9, 2, 3, 10_000).view(torch.int32), whole.view(torch.int32))


def test_identical_bits_in_a_separate_process():
    code = ("import hashlib; from permcodec.init import distributions as D; "
            "p = D.make_params('he_normal', (32, 100)); "
            "print(hashlib.sha256(D.sample('he_normal', p, 77, 3, 0, 3200).numpy().tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    params = D.make_params("he_normal", (32, 100))
    assert out == sha256_bits(D.sample("he_normal", params, 77, 3, 0, 3200))


@pytest.mark.parametrize("dist,shape,key,expected", [
    ("he_uniform", (20, 3, 3, 3), "bound", math.sqrt(6 / 27)),
    ("glorot_uniform", (20, 3, 3, 3), "bound", math.sqrt(6 / (27 + 180))),
    ("he_normal", (10, 50), "std", math.sqrt(2 / 50)),
    ("glorot_normal", (10, 50), "std", math.sqrt(2 / 60)),
    ("he_uniform", (128,), "bound", math.sqrt(6 / 128)),  # 1-D: fan_in = fan_out = length
    ("glorot_normal", (128,), "std", math.sqrt(2 / 256)),
])
def test_derived_constants_are_stored_float32(dist, shape, key, expected):
    params = D.make_params(dist, shape)
    assert params == {key: D.to_float32(expected)}


def test_uniform_range_and_moments():
    v = D.sample("uniform", D.make_params("uniform", (1,), low=-1.0, high=3.0), 1, 1, 0, 200_000)
    assert v.min() >= -1.0 and v.max() <= 3.0
    assert abs(v.mean().item() - 1.0) < 0.02 and abs(v.std().item() - 4 / math.sqrt(12)) < 0.02


def test_normal_moments():
    v = D.sample("normal", D.make_params("normal", (1,), mean=2.0, std=0.5), 1, 1, 0, 200_000)
    assert abs(v.mean().item() - 2.0) < 0.01 and abs(v.std().item() - 0.5) < 0.01


def test_sparse_density_and_values():
    params = D.make_params("sparse", (100, 100), density=0.3)
    v = D.sample("sparse", params, 1, 1, 0, 200_000)
    dense = D.sample("he_uniform", params["base"]["params"], 1, 1, 0, 200_000)
    kept = v != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    assert torch.equal(v[kept], dense[kept])


def test_shared_values():
    v = D.sample("shared", D.make_params("shared", (1,), value=0.25, density=0.5), 1, 1, 0, 10_000)
    assert set(v.unique().tolist()) == {0.0, 0.25}


def test_density_one_keeps_everything():
    params = D.make_params("shared", (1,), value=1.0, density=1.0)
    assert params["keep_below"] == 2**32
    assert bool((D.sample("shared", params, 1, 1, 0, 1000) == 1.0).all())


def test_exact_log_is_accurate():
    u = torch.cat([torch.rand(100_000, dtype=torch.float64).clamp_min(2**-53), torch.tensor([1.0, 2**-53, 0.5])])
    assert torch.allclose(exactmath.log_positive(u), torch.log(u), rtol=1e-15, atol=1e-300)
    assert exactmath.log_positive(torch.tensor([1.0], dtype=torch.float64)).item() == 0.0


def test_exact_sincos_are_accurate():
    for quadrant in range(4):
        x = torch.rand(20_000, dtype=torch.float64) * exactmath.HALF_PI
        sin, cos = exactmath.sincos_turn(torch.full(x.shape, quadrant, dtype=torch.int64), x)
        angle = x + quadrant * exactmath.HALF_PI
        assert (sin - torch.sin(angle)).abs().max() < 1e-15
        assert (cos - torch.cos(angle)).abs().max() < 1e-15


@pytest.mark.parametrize("dist,kwargs,message", [
    ("laplace", {}, "unknown distribution 'laplace' (argument dist)"),
    ("sparse", {"density": 0.0}, "dist='sparse': density must be in (0, 1], found 0.0"),
    ("sparse", {"density": 1.5}, "dist='sparse': density must be in (0, 1], found 1.5"),
    ("shared", {"value": 1.0, "density": -0.1}, "dist='shared': density must be in (0, 1], found -0.1"),
    ("sparse", {}, "dist='sparse': argument 'density' is required"),
    ("shared", {"density": 0.5}, "dist='shared': argument 'value' is required"),
    ("shared", {"density": 0.5, "value": 0.0}, "dist='shared': shared value must be non-zero"),
    ("sparse", {"density": 1e-12}, "dist='sparse': density 9.999999960041972e-13 is too small"),
    ("normal", {"std": 0.0}, "dist='normal': std must be > 0, found 0.0"),
    ("normal", {"std": -1.0}, "dist='normal': std must be > 0, found -1.0"),
    ("uniform", {"low": 1.0, "high": 1.0}, "dist='uniform': uniform needs low < high, found low=1.0 high=1.0"),
    ("uniform", {"low": float("nan")}, "dist='uniform': parameter 'low' must be finite, found nan"),
    ("he_uniform", {"gain": 2.0}, "dist='he_uniform': unexpected argument(s) gain"),
    ("sparse", {"density": 0.5, "base": "shared"}, "dist='sparse': base must be one of"),
])
def test_bad_arguments(dist, kwargs, message):
    with pytest.raises(SpecError) as err:
        D.make_params(dist, (4, 4), **kwargs)
    assert str(err.value).startswith(message)


def test_zero_dim_has_no_fan():
    with pytest.raises(SpecError, match="a 0-D tensor has no fan"):
        D.make_params("he_uniform", ())


@pytest.mark.parametrize("dist,params,message", [
    ("uniform", {"low": 0.1, "high": 1.0}, "parameter 'low' must be a float32 value, found 0.1"),
    ("uniform", {"low": 0.0}, "params must have keys ['high', 'low'], found ['low']"),
    ("he_normal", {"std": "1"}, "parameter 'std' must be a number, found '1'"),
    ("shared", {"value": 1.0, "density": 0.5, "keep_below": 7}, "keep_below must be round(density * 2^32)"),
    ("normal", {"mean": 0.0, "std": D.to_float32(3e37)}, "|mean| + 16.0 * std must stay below the float32 maximum"),
])
def test_validate_rejects_stored_params(dist, params, message):
    with pytest.raises(SpecError) as err:
        D.validate(dist, params, "t")
    assert message in str(err.value)


# ---------------------------------------------------------------- subnormal outputs
# Parameters so small that the float32 results are subnormal (below 2^-126). specs/rng.md §4 rule 2: the one
# rounding to f32 keeps subnormals. The expected bits come from tools/spec_decoder.py (written from the spec
# alone, numpy only) for the f64 value, rounded to f32 here with integer arithmetic only, so that neither
# permcodec nor a flush-to-zero mode of the FPU can reach the reference.

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import spec_decoder  # noqa: E402

SMALLEST_NORMAL_F32 = 2.0**-126


def f32_bits_exact(x: float) -> int:
    """Bits of the float32 nearest to the float64 x (ties to even, subnormals kept, -0.0 -> +0.0), in integers."""
    magnitude = Fraction(abs(x))
    if magnitude == 0:
        return 0
    exponent = math.frexp(abs(x))[1] - 1  # 2^exponent <= |x| < 2^(exponent + 1)
    quantum = max(exponent - 23, -149)  # the f32 spacing at |x|: 24 significant bits, or 2^-149 below 2^-126
    k = round(magnitude / Fraction(2) ** quantum)  # Fraction rounds half to even
    if k == 0:
        return 0
    bits = k if k < 2**23 else ((quantum + 150) << 23) + (k - 2**23)
    return bits | (0x80000000 if x < 0 else 0)


def reference_bits(dist, params, seed, stream, count):
    params = {k: float(v) for k, v in params.items()}
    if dist == "uniform":
        x = spec_decoder.uniform_f64(seed, stream, count, params["low"], params["high"])
    elif dist == "he_uniform":
        x = spec_decoder.uniform_f64(seed, stream, count, -params["bound"], params["bound"])
    else:
        x = spec_decoder.normal_f64(seed, stream, count, params.get("mean", 0.0), params["std"])
    return torch.tensor([f32_bits_exact(v) for v in x.tolist()], dtype=torch.int64).to(torch.int32)


def test_exact_f32_rounding_reference():
    """The reference rounding itself, on values whose f32 bits are known by construction."""
    assert f32_bits_exact(2.0**-149) == 1 and f32_bits_exact(-(2.0**-149)) == 0x80000001
    assert f32_bits_exact(2.0**-150) == 0  # a tie between 0 and 2^-149: even is 0
    assert f32_bits_exact(3 * 2.0**-150) == 2  # a tie between 1 and 2 quanta: even is 2
    assert f32_bits_exact(2.0**-150 + 2.0**-200) == 1
    assert f32_bits_exact(-(2.0**-151)) == 0  # rounds to -0.0, canonical +0.0
    assert f32_bits_exact(2.0**-126 - 2.0**-160) == 0x00800000  # rounds up to the smallest normal
    assert f32_bits_exact((2**23 - 1) * 2.0**-149) == 0x007FFFFF  # the largest subnormal
    assert f32_bits_exact(1.0) == 0x3F800000 and f32_bits_exact(-2.5) == 0xC0200000
    assert f32_bits_exact(1.0 + 2.0**-24) == 0x3F800000 and f32_bits_exact(1.0 + 3 * 2.0**-24) == 0x3F800002


@pytest.mark.parametrize("dist,params", [
    ("uniform", {"low": D.to_float32(1e-40), "high": D.to_float32(3e-40)}),
    ("uniform", {"low": D.to_float32(-2e-39), "high": D.to_float32(1e-39)}),
    ("he_uniform", {"bound": D.to_float32(1e-44)}),
    ("normal", {"mean": 0.0, "std": D.to_float32(1e-42)}),
    ("normal", {"mean": D.to_float32(5e-40), "std": D.to_float32(1e-40)}),
    ("he_normal", {"std": D.to_float32(3e-45)}),
], ids=["uniform-1e-40", "uniform-around-0", "he_uniform-1e-44", "normal-1e-42", "normal-mean-5e-40",
        "he_normal-3e-45"])
def test_subnormal_outputs_are_kept_bit_exactly(dist, params):
    params = D.validate(dist, params, "t")
    count = 4001  # odd: the last normal pair is half used
    values = D.sample(dist, params, 2020, 11, 0, count)
    expected = reference_bits(dist, params, 2020, 11, count)
    magnitude = expected & 0x7FFFFFFF
    assert int(((magnitude > 0) & (magnitude < 0x00800000)).sum()) > count // 2, "the case has too few subnormals"
    assert bool(((values.abs() > 0) & (values.abs() < SMALLEST_NORMAL_F32)).any()), "subnormals were flushed"
    assert torch.equal(values.view(torch.int32), expected)
    # slices start mid-stream: the same bits
    assert torch.equal(D.sample(dist, params, 2020, 11, 1001, 999).view(torch.int32), expected[1001:2000])


@pytest.mark.parametrize("base", ["uniform", "normal"])
def test_sparse_subnormal_base_values_are_kept(base):
    base_params = {"low": D.to_float32(-1e-41), "high": D.to_float32(1e-41)} if base == "uniform" else \
        {"mean": 0.0, "std": D.to_float32(1e-42)}
    params = D.validate("sparse", {"density": D.to_float32(0.5), "keep_below": 2**31,
                                   "base": {"dist": base, "params": base_params}}, "t")
    count = 3000
    got = D.sample("sparse", params, 9, 4, 0, count).view(torch.int32)
    kept = torch.from_numpy(spec_decoder.keep_mask(9, 4, count, 2**31))
    expected = torch.where(kept, reference_bits(base, base_params, 9, 4, count), torch.zeros((), dtype=torch.int32))
    assert 0 < int(((expected & 0x7FFFFFFF) > 0).sum()) < count
    assert torch.equal(got, expected)


def test_shared_smallest_subnormal_value():
    value = D.to_float32(1e-45)
    assert value == 2.0**-149  # the smallest positive subnormal float32
    params = D.make_params("shared", (1,), value=1e-45, density=0.25)
    got = D.sample("shared", params, 3, 8, 0, 4000).view(torch.int32)
    kept = torch.from_numpy(spec_decoder.keep_mask(3, 8, 4000, params["keep_below"]))
    assert 800 < int(kept.sum()) < 1200
    assert torch.equal(got, torch.where(kept, torch.ones((), dtype=torch.int32), torch.zeros((), dtype=torch.int32)))
