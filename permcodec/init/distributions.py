"""Value distributions: Philox words -> canonical float32, bit-exact on every device.

Element i of a tensor (flat, row-major) draws from substream 0:
- uniform family: words 2h, 2h+1 of block i >> 1, h = i & 1 (a 53-bit uniform);
- normal family: block i >> 1 gives one Box-Muller pair; even i takes r*cos, odd i r*sin.
Sparse and shared pools also draw a keep-mask from substream 1: word i & 3 of block i >> 2.
Level pools draw no values: each row holds fixed counts of K stored values, placed in the order of
the row's substream-0 words (``row_orders``, the same per-row order the shuffled block layout takes
from substream 2).

Float work follows the rules of specs/rng.md: float64 basic operations one at a
time, no library transcendental, one rounding to float32 at the end, then +0.0
so that -0.0 never appears. The same code runs on numpy arrays and on torch
tensors (``permcodec.arrays``): ``device`` is a torch device, or an ``arrays``
namespace such as ``arrays.NUMPY`` (what the CPU decoder uses). Every parameter a decoder needs (a bound, a std, a
mask threshold) is stored in the record; nothing is recomputed at decode time.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from .. import arrays
from ..errors import SpecError
from . import exactmath
from .exactmath import TWO_POW_MINUS_52, TWO_POW_MINUS_53
from .distparams import (  # noqa: F401 (re-exported)
    DENSE,
    DISTRIBUTIONS,
    MASKED,
    MAX_LEVELS,
    keep_below,
    level_counts,
    to_float32,
    validate,
)
from .philox import SUBSTREAM_MASK, SUBSTREAM_VALUES, check_seed, check_stream
from .rng import compiled_kernel, on_host, philox_blocks

# Elements sampled per pass, so float64 temporaries stay bounded for huge tensors.
CHUNK_ELEMENTS = 1 << 20
MAX_ELEMENTS = 2**63  # element indices, like block indices, stay non-negative in int64


# ---------------------------------------------------------------- parameters

def fans(shape) -> tuple[int, int]:
    """torch's fan_in/fan_out for dim >= 2; fan_in = fan_out = length for 1-D tensors (the Keras rule)."""
    shape = tuple(shape)
    if len(shape) == 0:
        raise SpecError("a 0-D tensor has no fan; fan-based distributions need a tensor of dim >= 1")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def make_params(dist: str, shape, **user) -> dict:
    """Derive the stored float32 params of ``dist`` for a tensor of ``shape`` from user arguments."""
    where = f"dist={dist!r}"
    if dist not in DISTRIBUTIONS:
        raise SpecError(f"unknown distribution {dist!r} (argument dist); known: {', '.join(DISTRIBUTIONS)}")
    if dist == "uniform":
        params = {"low": to_float32(user.pop("low", 0.0)), "high": to_float32(user.pop("high", 1.0))}
    elif dist == "normal":
        params = {"mean": to_float32(user.pop("mean", 0.0)), "std": to_float32(user.pop("std", 1.0))}
    elif dist in ("he_uniform", "glorot_uniform", "he_normal", "glorot_normal"):
        params = _fan_params(dist, shape)
    elif dist == "sparse":
        density = _density_argument(user, where)
        base, base_params = _base_arguments(user, shape, where)
        params = {"density": density, "keep_below": keep_below(density),
                  "base": {"dist": base, "params": base_params}}
    elif dist == "levels":
        levels = _levels_argument(user, where)
        base, base_params = _base_arguments(user, shape, where)
        params = {"values": level_values(base, base_params, levels, where)}
    else:
        density = _density_argument(user, where)
        if "value" not in user:
            raise SpecError(f"{where}: argument 'value' is required")
        params = {"value": to_float32(_user_float(user.pop("value"), "value", where)),
                  "density": density, "keep_below": keep_below(density)}
    if user:
        raise SpecError(f"{where}: unexpected argument(s) {', '.join(sorted(user))}")
    return validate(dist, params, where)


def _user_float(value, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise SpecError(f"{where}: argument {name!r} must be a number, found {value!r}")
    return float(value)


def _density_argument(user: dict, where: str) -> float:
    if "density" not in user:
        raise SpecError(f"{where}: argument 'density' is required")
    raw = _user_float(user.pop("density"), "density", where)
    if not 0.0 < raw <= 1.0:
        raise SpecError(f"{where}: density must be in (0, 1], found {raw}")
    return to_float32(raw)


def _base_arguments(user: dict, shape, where: str) -> tuple[str, dict]:
    """(base, its params) of sparse and levels: ``base`` (default he_uniform) takes every argument left."""
    base = user.pop("base", "he_uniform")
    if base not in DENSE:
        raise SpecError(f"{where}: base must be one of {', '.join(DENSE)}, found {base!r}")
    base_params = make_params(base, shape, **user)
    user.clear()
    return base, base_params


def _levels_argument(user: dict, where: str) -> int:
    levels = user.pop("num_levels", None)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 1 <= levels <= MAX_LEVELS:
        raise SpecError(f"{where}: argument 'num_levels' must be an integer in [1, {MAX_LEVELS}], found {levels!r}")
    return int(levels)


def level_values(base: str, base_params: dict, levels: int, where: str) -> list[float]:
    """The K quantile midpoints of the base distribution, (2k + 1) / 2K for k < K, rounded to float32.

    Computed once, at init; the record stores them, so no decoder evaluates a quantile function.
    """
    midpoints = [(2 * k + 1) / (2 * levels) for k in range(levels)]
    if base in ("uniform", "he_uniform", "glorot_uniform"):
        low, high = (base_params["low"], base_params["high"]) if base == "uniform" else \
            (-base_params["bound"], base_params["bound"])
        values = [low + (high - low) * q for q in midpoints]
    else:
        normal = statistics.NormalDist(base_params.get("mean", 0.0), base_params["std"])
        values = [normal.inv_cdf(q) for q in midpoints]
    rounded = [to_float32(v) + 0.0 for v in values]
    if any(a >= b for a, b in zip(rounded, rounded[1:])):
        raise SpecError(f"{where}: {levels} levels of {base} {base_params} are not distinct in float32; "
                        f"choose fewer levels")
    return rounded


def _fan_params(dist: str, shape) -> dict:
    fan_in, fan_out = fans(shape)
    if fan_in == 0 or fan_out == 0:
        raise SpecError(f"dist={dist!r}: tensor of shape {tuple(shape)} has a zero fan")
    if dist == "he_uniform":
        return {"bound": to_float32(math.sqrt(6.0 / fan_in))}
    if dist == "glorot_uniform":
        return {"bound": to_float32(math.sqrt(6.0 / (fan_in + fan_out)))}
    if dist == "he_normal":
        return {"std": to_float32(math.sqrt(2.0 / fan_in))}
    return {"std": to_float32(math.sqrt(2.0 / (fan_in + fan_out)))}


# ---------------------------------------------------------------- sampling

def _blocks_for(seed, stream, substream, start, count, per_block, xp):
    """Words of the blocks that hold elements [start, start+count), and the offset of `start` in them."""
    first = start // per_block
    last = (start + count - 1) // per_block
    words = philox_blocks(seed, stream, substream, first, last - first + 1, xp)
    return words, start - first * per_block


def uniform53(high_word, low_word):
    """k = (high_word >> 5) * 2^26 + (low_word >> 6), an integer in [0, 2^53)."""
    return ((high_word >> 5) << 26) | (low_word >> 6)


def uniform_integers(seed, stream, start, count, device):
    """The 53-bit integer k of each element (words 2h, 2h+1 of block i >> 1); the CPU's compiled path goes
    straight to values (``_uniform_f32``)."""
    xp = arrays.on(device)
    words, offset = _blocks_for(seed, stream, SUBSTREAM_VALUES, start, count, 2, xp)
    pairs = words.reshape(-1, 2)[offset:offset + count]
    return uniform53(pairs[:, 0], pairs[:, 1])


def _uniform_f64(seed, stream, start, count, low, high, xp):
    u = xp.astype(uniform_integers(seed, stream, start, count, xp), xp.float64) * TWO_POW_MINUS_53
    return u * (high - low) + low


def _uniform_f32(seed, stream, start, count, low, high, xp):
    """Canonical float32 U(low, high): in one compiled pass on the CPU, else on the array path."""
    if on_host(xp) and compiled_kernel(count // 2 + 1) is not None:
        from . import _uniform_numba

        values = _uniform_numba.uniform_values(check_seed(seed), check_stream(stream), start, count, low, high)
        return xp.from_numpy(values)
    return canonical_float32(_uniform_f64(seed, stream, start, count, low, high, xp))


def box_muller(words):
    """Standard normal pairs from blocks [n, 4] -> float64 [n, 2] (r*cos, r*sin)."""
    xp = arrays.of(words)
    u = xp.astype(uniform53(words[:, 0], words[:, 1]) + 1, xp.float64) * TWO_POW_MINUS_53  # in (0, 1]
    radius = xp.sqrt(exactmath.log_positive(u) * -2.0)
    quadrant = words[:, 2] >> 30
    fraction = xp.astype(((words[:, 2] & 0x3FFFFFFF) << 22) | (words[:, 3] >> 10), xp.float64) * TWO_POW_MINUS_52
    sin, cos = exactmath.sincos_turn(quadrant, fraction * exactmath.HALF_PI)
    return xp.stack([radius * cos, radius * sin], axis=1)


def _normal_f64(seed, stream, start, count, mean, std, xp):
    words, offset = _blocks_for(seed, stream, SUBSTREAM_VALUES, start, count, 2, xp)
    z = box_muller(words).reshape(-1)[offset:offset + count]
    return z * std + mean


def _normal_f32(seed, stream, start, count, mean, std, xp):
    """Canonical float32 N(mean, std): in one compiled pass on the CPU, else on the array path."""
    if on_host(xp) and compiled_kernel(count // 2 + 1) is not None:
        from . import _normal_numba

        return xp.from_numpy(_normal_numba.normal_values(check_seed(seed), check_stream(stream), start, count,
                                                         mean, std))
    return canonical_float32(_normal_f64(seed, stream, start, count, mean, std, xp))


def element_words(seed, stream, substream, start, count, device):
    """One 32-bit word per element (int64 [count]): word i & 3 of block i >> 2 of ``substream``."""
    words, offset = _blocks_for(seed, stream, substream, start, count, 4, arrays.on(device))
    return words.reshape(-1)[offset:offset + count]


def keep_mask(seed, stream, start, count, threshold, device):
    """Bool mask: element i kept iff its substream-1 word (``element_words``) < threshold."""
    return element_words(seed, stream, SUBSTREAM_MASK, start, count, device) < threshold


UNIFORM_FAMILY = ("uniform", "he_uniform", "glorot_uniform")


def uniform_bounds(dist: str, params: dict) -> tuple[float, float]:
    """(low, high) of a distribution of ``UNIFORM_FAMILY``."""
    if dist == "uniform":
        return params["low"], params["high"]
    return -params["bound"], params["bound"]


def _dense_f32(dist, params, seed, stream, start, count, xp):
    """The canonical float32 values of a dense distribution."""
    if dist in UNIFORM_FAMILY:
        return _uniform_f32(seed, stream, start, count, *uniform_bounds(dist, params), xp)
    return _normal_f32(seed, stream, start, count, params.get("mean", 0.0), params["std"], xp)


def canonical_float32(x64):
    """Round once to float32, then add +0.0 so that -0.0 becomes +0.0."""
    xp = arrays.of(x64)
    return xp.astype(x64, xp.float32) + 0.0


def _sample_chunk(dist, params, seed, stream, start, count, xp):
    if dist in DENSE:
        return _dense_f32(dist, params, seed, stream, start, count, xp)
    if dist == "sparse":
        base = params["base"]
        values = _dense_f32(base["dist"], base["params"], seed, stream, start, count, xp)
    else:
        values = xp.full((count,), params["value"], xp.float32)
    if on_host(xp) and compiled_kernel(count // 4 + 1) is not None:
        from . import _mask_numba

        return xp.from_numpy(_mask_numba.zero_unkept(xp.to_numpy(values), check_seed(seed), check_stream(stream),
                                                     start, params["keep_below"]))
    keep = keep_mask(seed, stream, start, count, params["keep_below"], xp)
    return xp.where(keep, values, xp.zeros((count,), xp.float32))


def row_orders(seed, stream, substream, first_row, rows, n, device):
    """int64 [rows, n]: each row's positions in ascending order of their 32-bit Philox words, ties by position.

    Element i = row * n + j is keyed by its word of ``substream`` (``element_words``, as the keep-mask).
    """
    xp = arrays.on(device)
    if rows * n == 0:
        return xp.empty((rows, n), xp.int64)
    keys = element_words(seed, stream, substream, first_row * n, rows * n, xp).reshape(rows, n)
    return xp.argsort_rows(keys)


def level_rows(values, seed, stream, first_row, rows, n, device):
    """float32 [rows, n] of a level pool: the row's sorted values (``level_counts`` copies each) laid out so
    that the position with the t-th smallest substream-0 word holds the t-th smallest value."""
    xp = arrays.on(device)
    counts = xp.tensor(level_counts(len(values), n), xp.int64)
    pool = xp.repeat(xp.tensor(values, xp.float32), counts)
    order = row_orders(seed, stream, SUBSTREAM_VALUES, first_row, rows, n, xp)
    return xp.put_rows(order, xp.broadcast_rows(pool, rows, n))


def _sample_levels(values, seed, stream, start, count, row_length, xp):
    """Elements [start, start+count) of a level pool with rows of ``row_length``, whole rows at a time."""
    out = xp.empty((count,), xp.float32)
    if count == 0:
        return out
    rows_per_pass = max(1, CHUNK_ELEMENTS // max(row_length, 1))
    first, last = start // row_length, (start + count - 1) // row_length
    for row in range(first, last + 1, rows_per_pass):
        rows = min(rows_per_pass, last + 1 - row)
        chunk = level_rows(values, seed, stream, row, rows, row_length, xp).reshape(-1)
        lo, hi = max(start, row * row_length), min(start + count, (row + rows) * row_length)
        out[lo - start:hi - start] = chunk[lo - row * row_length:hi - row * row_length]
    return out


def sample(dist: str, params: dict, seed: int, stream: int, start: int, count: int,
           device="cpu", row_length: int | None = None):
    """Elements [start, start+count) of the flat tensor drawn from (dist, params, seed, stream): float32 [count],
    a tensor on ``device``, or a numpy array for ``device=arrays.NUMPY``.

    Level pools need the tensor's ``row_length`` (their counts are per row); other distributions ignore it.
    """
    if start < 0 or count < 0 or start + count > MAX_ELEMENTS:
        raise SpecError(f"element range [{start}, {start + count}) is outside [0, 2**63)")
    xp = arrays.on(device)
    # judged on the whole draw, not per chunk: a large one loads numba here
    compiled = on_host(xp) and count > CHUNK_ELEMENTS and compiled_kernel(count // 2 + 1) is not None
    if dist == "levels":
        if row_length is None:
            raise SpecError("dist='levels' needs the tensor's row_length to sample")
        return _sample_levels(params["values"], seed, stream, start, count, row_length, xp)
    if count <= CHUNK_ELEMENTS or compiled:
        # The compiled kernels allocate only their output, so they draw a whole tensor at once, on every core,
        # where chunks each cost an array and a copy on one (a 2.1 M sparse pool: 1.0 of its 4.8 ms).
        return _sample_chunk(dist, params, seed, stream, start, count, xp)
    out = xp.empty((count,), xp.float32)
    for first in range(0, count, CHUNK_ELEMENTS):
        n = min(CHUNK_ELEMENTS, count - first)
        out[first:first + n] = _sample_chunk(dist, params, seed, stream, start + first, n, xp)
    return out
