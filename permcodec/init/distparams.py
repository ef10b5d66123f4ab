"""Stored distribution parameters: the names, and the strict check of a (dist, params) pair.

The decoder checks every init record with ``validate`` when it parses a header,
before anything is sampled, so this module needs no torch. See specs/rng.md §6-7.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SpecError
from ..keys import key_mismatch

FLOAT32_MAX = float(np.finfo(np.float32).max)
TWO_POW_32 = 1 << 32
# |z| of a Box-Muller draw is at most sqrt(-2 ln 2^-53) < 8.6; mean + 16 std must stay finite.
NORMAL_SPAN = 16.0

DENSE = ("uniform", "normal", "he_uniform", "glorot_uniform", "he_normal", "glorot_normal")
MASKED = ("sparse", "shared")
LEVELS = ("levels",)
DISTRIBUTIONS = DENSE + MASKED + LEVELS
# A level pool holds at most this many distinct values: a bound on the header's arrays, so that a
# decoder's msgpack cap stays fixed (specs/format.md Section 5).
MAX_LEVELS = 1 << 16


def to_float32(x: float) -> float:
    """The float32 nearest to x (round half to even), as a Python float."""
    return float(np.float32(x))


def keep_below(density: float) -> int:
    """Mask threshold: an element is kept iff its mask word < round(density * 2^32)."""
    return round(density * TWO_POW_32)


def _number(params: dict, key: str, where: str) -> float:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}: parameter {key!r} must be a number, found {value!r}")
    try:
        as_float = float(value)
    except OverflowError:
        raise SpecError(f"{where}: parameter {key!r} must be finite, found an integer of {value.bit_length()} bits") from None
    if isinstance(value, int) and as_float != value:  # exact: 2**53 + 1 is not the float 2**53
        raise SpecError(f"{where}: parameter {key!r} must be a float32 value, found {value!r}")
    value = as_float
    if not math.isfinite(value):
        raise SpecError(f"{where}: parameter {key!r} must be finite, found {value}")
    if abs(value) > FLOAT32_MAX or to_float32(value) != value:
        raise SpecError(f"{where}: parameter {key!r} must be a float32 value, found {value!r}")
    return value


def _exact_keys(params: dict, expected: set, where: str) -> None:
    found = key_mismatch(params, expected)
    if found:
        raise SpecError(f"{where}: params must have keys {sorted(expected)}, found {found}")


def _check_density(density: float, where: str) -> None:
    if not 0.0 < density <= 1.0:
        raise SpecError(f"{where}: density must be in (0, 1], found {density}")
    if keep_below(density) < 1:
        raise SpecError(f"{where}: density {density} is too small (keeps no 32-bit mask word)")


def _check_positive(value: float, key: str, where: str) -> None:
    if not value > 0.0:
        raise SpecError(f"{where}: {key} must be > 0, found {value}")


def validate(dist: str, params: dict, where: str = "init") -> dict:
    """Check a stored (dist, params) pair strictly; returns the params with every float field as a float.

    Raises SpecError. Float fields may arrive as integers (JSON, msgpack); they
    are converted here so that sampling only ever sees Python floats.
    """
    if dist not in DISTRIBUTIONS:
        raise SpecError(f"{where}: unknown distribution {dist!r}; known: {', '.join(DISTRIBUTIONS)}")
    return _VALIDATORS[dist](dist, params, where)


def _validate_uniform(dist: str, params: dict, where: str) -> dict:
    _exact_keys(params, {"low", "high"}, where)
    low, high = _number(params, "low", where), _number(params, "high", where)
    if not low < high:
        raise SpecError(f"{where}: uniform needs low < high, found low={low} high={high}")
    return _floats(params, tuple(params))


def _validate_bounded(dist: str, params: dict, where: str) -> dict:
    _exact_keys(params, {"bound"}, where)
    _check_positive(_number(params, "bound", where), "bound", where)
    return _floats(params, tuple(params))


def _validate_normal(dist: str, params: dict, where: str) -> dict:
    _exact_keys(params, {"mean", "std"} if dist == "normal" else {"std"}, where)
    std = _number(params, "std", where)
    mean = _number(params, "mean", where) if dist == "normal" else 0.0
    _check_positive(std, "std", where)
    if abs(mean) + NORMAL_SPAN * std > FLOAT32_MAX:
        raise SpecError(f"{where}: |mean| + {NORMAL_SPAN} * std must stay below the float32 maximum")
    return _floats(params, tuple(params))


def _validate_sparse(dist: str, params: dict, where: str) -> dict:
    _exact_keys(params, {"density", "keep_below", "base"}, where)
    _validate_mask(params, where)
    base = params["base"]
    found = key_mismatch(base, {"dist", "params"})
    if found:
        raise SpecError(f"{where}: sparse base must be a map with keys ['dist', 'params'], found {found}")
    if base["dist"] not in DENSE:
        raise SpecError(f"{where}: sparse base must be one of {', '.join(DENSE)}, found {base['dist']!r}")
    base = {"dist": base["dist"], "params": validate(base["dist"], base["params"], f"{where} (sparse base)")}
    return {**_floats(params, ("density",)), "base": base}


def _validate_shared(dist: str, params: dict, where: str) -> dict:
    _exact_keys(params, {"value", "density", "keep_below"}, where)
    _validate_mask(params, where)
    if _number(params, "value", where) == 0.0:
        raise SpecError(f"{where}: shared value must be non-zero")
    return _floats(params, ("value", "density"))


def _validate_levels(dist: str, params: dict, where: str) -> dict:
    _exact_keys(params, {"values"}, where)
    values = params["values"]
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_LEVELS:
        raise SpecError(f"{where}: levels values must be a list of 1 to {MAX_LEVELS} numbers, found "
                        f"{type(values).__name__}" + (f" of {len(values)}" if isinstance(values, list) else ""))
    checked = [_number({"value": v}, "value", f"{where} (levels value {i})") for i, v in enumerate(values)]
    if any(a >= b for a, b in zip(checked, checked[1:])):
        raise SpecError(f"{where}: levels values must be strictly ascending")
    if any(v == 0.0 and math.copysign(1.0, v) < 0 for v in checked):
        raise SpecError(f"{where}: levels values hold -0.0; pools hold +0.0 only")
    return {"values": checked}


def level_counts(levels: int, n: int) -> list[int]:
    """Copies of each of K values in a row of n: n // K each, and one more for the first n mod K."""
    each, extra = divmod(n, levels)
    return [each + (k < extra) for k in range(levels)]


def _floats(params: dict, keys: tuple) -> dict:
    return {key: float(value) if key in keys else value for key, value in params.items()}


def _validate_mask(params: dict, where: str) -> None:
    density = _number(params, "density", where)
    _check_density(density, where)
    threshold = params["keep_below"]
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold != keep_below(density):
        raise SpecError(f"{where}: keep_below must be round(density * 2^32) = {keep_below(density)}, "
                        f"found {threshold!r}")


_VALIDATORS = {"uniform": _validate_uniform, "he_uniform": _validate_bounded, "glorot_uniform": _validate_bounded,
               "normal": _validate_normal, "he_normal": _validate_normal, "glorot_normal": _validate_normal,
               "sparse": _validate_sparse, "shared": _validate_shared, "levels": _validate_levels}
