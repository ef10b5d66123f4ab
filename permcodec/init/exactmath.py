"""Transcendental functions built only from IEEE-754 basic operations on float64 tensors.

Library log/sin/cos differ in their last bits between CPU and CUDA math
libraries, so permcodec defines its own: range reduction by exact bit
manipulation, then a fixed polynomial evaluated by Horner's rule, one rounded
operation at a time (multiply, then add; never fused). Every constant is the
float64 written here in hex; specs/rng.md lists the same values.
Only ``+ - * / sqrt`` on float64, comparisons and integer bit operations are used, on numpy arrays or torch
tensors alike (``permcodec.arrays``).
"""

from __future__ import annotations

from .. import arrays

# Taylor coefficients (-1)^k / (2k+1)! of sin(x)/x in powers of z = x*x.
SIN_COEFFS = tuple(float.fromhex(h) for h in (
    "0x1.0000000000000p+0", "-0x1.5555555555555p-3", "0x1.1111111111111p-7",
    "-0x1.a01a01a01a01ap-13", "0x1.71de3a556c734p-19", "-0x1.ae64567f544e4p-26",
    "0x1.6124613a86d09p-33", "-0x1.ae7f3e733b81fp-41", "0x1.952c77030ad4ap-49",
    "-0x1.2f49b46814157p-57", "0x1.71b8ef6dcf572p-66", "-0x1.761b41316381ap-75",
))
# Taylor coefficients (-1)^k / (2k)! of cos(x) in powers of z = x*x.
COS_COEFFS = tuple(float.fromhex(h) for h in (
    "0x1.0000000000000p+0", "-0x1.0000000000000p-1", "0x1.5555555555555p-5",
    "-0x1.6c16c16c16c17p-10", "0x1.a01a01a01a01ap-16", "-0x1.27e4fb7789f5cp-22",
    "0x1.1eed8eff8d898p-29", "-0x1.93974a8c07c9dp-37", "0x1.ae7f3e733b81fp-45",
    "-0x1.6827863b97d97p-53", "0x1.e542ba4020225p-62", "-0x1.0ce396db7f853p-70",
    "0x1.f2cf01972f578p-80",
))
# Coefficients 1/(2k+1) of atanh(s)/s in powers of w = s*s; ln(m) = 2s * sum.
ATANH_COEFFS = tuple(float.fromhex(h) for h in (
    "0x1.0000000000000p+0", "0x1.5555555555555p-2", "0x1.999999999999ap-3",
    "0x1.2492492492492p-3", "0x1.c71c71c71c71cp-4", "0x1.745d1745d1746p-4",
    "0x1.3b13b13b13b14p-4", "0x1.1111111111111p-4", "0x1.e1e1e1e1e1e1ep-5",
    "0x1.af286bca1af28p-5", "0x1.8618618618618p-5", "0x1.642c8590b2164p-5",
))
# The scales that turn Philox's integers into float64 fractions (specs/rng.md §6): exact powers of two.
TWO_POW_MINUS_52 = 2.0**-52
TWO_POW_MINUS_53 = 2.0**-53
HALF_PI = float.fromhex("0x1.921fb54442d18p+0")
SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")
# ln 2 split so that e * LN2_HI is exact for |e| < 2^11 (Cody-Waite).
LN2_HI = float.fromhex("0x1.62e42fee00000p-1")
LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")

_EXPONENT_BIAS = 1023
_MANTISSA_BITS = 52
_MANTISSA_MASK = (1 << _MANTISSA_BITS) - 1


def horner(z, coeffs: tuple[float, ...]):
    """sum(coeffs[k] * z^k), highest power first, one rounded multiply and one rounded add per step."""
    acc = arrays.of(z).full_like(z, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * z
        acc = acc + c
    return acc


def log_positive(u):
    """Natural log of positive, normal float64 values.

    u = m * 2^e with m in (sqrt(2)/2, sqrt(2)], found from the bits of u;
    ln(m) = 2 atanh(s) with s = (m - 1) / (m + 1), |s| <= 0.1716.
    """
    xp = arrays.of(u)
    bits = xp.bits_as(u, xp.int64)
    exponent = (bits >> _MANTISSA_BITS) - _EXPONENT_BIAS
    m = xp.bits_as((bits & _MANTISSA_MASK) | (_EXPONENT_BIAS << _MANTISSA_BITS), xp.float64)
    large = m > SQRT2
    m = xp.where(large, m * 0.5, m)
    e = xp.astype(exponent + xp.astype(large, xp.int64), xp.float64)
    s = (m - 1.0) / (m + 1.0)
    ln_m = (s * 2.0) * horner(s * s, ATANH_COEFFS)
    return e * LN2_HI + (e * LN2_LO + ln_m)


def sincos_quadrant(x):
    """sin(x) and cos(x) for x in [0, pi/2)."""
    z = x * x
    return x * horner(z, SIN_COEFFS), horner(z, COS_COEFFS)


def sincos_turn(quadrant, x):
    """sin and cos of quadrant * pi/2 + x, for integer quadrant in 0..3 and x in [0, pi/2)."""
    where = arrays.of(x).where
    s, c = sincos_quadrant(x)
    sin = where(quadrant == 0, s, where(quadrant == 1, c, where(quadrant == 2, -s, -c)))
    cos = where(quadrant == 0, c, where(quadrant == 1, -s, where(quadrant == 2, -c, s)))
    return sin, cos
