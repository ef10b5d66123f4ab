"""Standalone decoder for permcodec `.pc` files, written from the specs alone.

This module was written from `specs/format.md` and `specs/rng.md` only, without
looking at the reference implementation (`permcodec/`), its tests or its tools.
It depends on numpy, msgpack and zstandard plus the standard library (hashlib,
zlib, struct); it does not use torch.

It reads format version 1, revision 1.7: the index schemes `delta`, `exact`
(swap code), `multiset` and `sparse` (zeros as one class, the other elements by
the swap code; format.md Sections 8-11a; the rANS arrangement coder of Section 9
is done with exact Python ints), the raw codec `shuffle-zstd`
(Section 13), block records (format.md 6.2 and 7.1: a permuted tensor coded in
one or two parts, each a matrix of blocks coded as a tensor of whole rows), the
`levels` distribution with its row orders (rng.md 6.7, 6.8) and group records
(format.md 6.4, revision 1.7: several raw tensors of one dtype coded back to
back as one raw tensor, each member keeping its index in the file's tensor
order).

`decode_file(path)` returns `{name: numpy.ndarray}` with the stored shape and a
numpy dtype matching the record's `dtype`, its keys in the file's tensor order
(format.md 6.4: group members at their `positions`, the permuted and raw
records in the indexes left, in the order of the `tensors` list).  A group is
decoded once and its SHA-256 checked over the group's bytes before it is split
into its members.  numpy has no bfloat16, so a
`bfloat16` tensor is returned as a `uint16` array holding the raw bfloat16 bits
(the upper half of the equivalent float32 bits).  `bool` tensors are returned
as numpy `bool_`.

Every failure the spec tells a decoder to detect raises `ValueError` with a
message naming the problem (and the tensor, where there is one).

Run as a script: `python tools/spec_decoder.py FILE.pc ...` prints, per tensor,
its name, shape and the SHA-256 of its bytes (C order, little-endian).
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
import time
import zlib

import msgpack
import numpy as np
import zstandard

# --------------------------------------------------------------------------
# Constants of specs/format.md
# --------------------------------------------------------------------------

MAGIC = b"\x89PCODEC\n"
FORMAT_VERSION = 1
PREAMBLE_SIZE = 20

# Section 15, the reference decoder's default limits.
LIMIT_HEADER_LENGTH = 64 * 1024 * 1024
LIMIT_TENSORS = 100_000
LIMIT_DIMS = 8
LIMIT_DIM = 2**31 - 1
LIMIT_ELEMENTS_PER_TENSOR = 2**31 - 1
LIMIT_ELEMENTS_PER_FILE = 2**36

# Section 6.1: dtype -> (numpy dtype of the returned array, element size).
DTYPES = {
    "float32": (np.dtype("<f4"), 4),
    "float16": (np.dtype("<f2"), 2),
    "bfloat16": (np.dtype("<u2"), 2),  # raw bits, see module docstring
    "float64": (np.dtype("<f8"), 8),
    "int64": (np.dtype("<i8"), 8),
    "int32": (np.dtype("<i4"), 4),
    "int16": (np.dtype("<i2"), 2),
    "int8": (np.dtype("i1"), 1),
    "uint8": (np.dtype("u1"), 1),
    "bool": (np.dtype("?"), 1),
}

COMMON_KEYS = {"name", "kind", "dtype", "shape", "offset", "length", "crc32", "sha256"}
PERMUTED_KEYS = COMMON_KEYS | {"init", "scheme", "scheme_params"}
BLOCK_RECORD_KEYS = COMMON_KEYS | {"init", "block", "parts"}  # 6.2, revision 1.4
RAW_KEYS = COMMON_KEYS | {"codec"}
# Section 6.4, group records (revision 1.7): neither `name` nor `shape`.
GROUP_KEYS = {"kind", "dtype", "names", "shapes", "positions", "codec",
              "offset", "length", "crc32", "sha256"}
INIT_KEYS = {"rng", "seed", "stream", "dist", "params"}

# Section 6.2, block records (revision 1.4).
BLOCK_KEYS = {"layout", "size"}
BLOCK_LAYOUTS = ("contiguous", "strided", "shuffled")
MAX_BLOCK_SIZE = 2**31 - 1
PART_KEYS = {"scheme", "scheme_params", "length"}

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# --------------------------------------------------------------------------
# Constants of specs/rng.md
# --------------------------------------------------------------------------

RNG_NAME = "philox4x32-10"
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)


def _hx(s: str) -> float:
    return float.fromhex(s)


SQRT2 = _hx("0x1.6a09e667f3bcdp+0")
LN2_HI = _hx("0x1.62e42fee00000p-1")
LN2_LO = _hx("0x1.a39ef35793c76p-33")
HALF_PI = _hx("0x1.921fb54442d18p+0")
TWO_M53 = _hx("0x1p-53")
TWO_M52 = _hx("0x1p-52")

ATANH = [_hx(s) for s in """
0x1.0000000000000p+0  0x1.5555555555555p-2  0x1.999999999999ap-3  0x1.2492492492492p-3
0x1.c71c71c71c71cp-4  0x1.745d1745d1746p-4  0x1.3b13b13b13b14p-4  0x1.1111111111111p-4
0x1.e1e1e1e1e1e1ep-5  0x1.af286bca1af28p-5  0x1.8618618618618p-5  0x1.642c8590b2164p-5
""".split()]

SIN = [_hx(s) for s in """
 0x1.0000000000000p+0  -0x1.5555555555555p-3   0x1.1111111111111p-7  -0x1.a01a01a01a01ap-13
 0x1.71de3a556c734p-19 -0x1.ae64567f544e4p-26  0x1.6124613a86d09p-33 -0x1.ae7f3e733b81fp-41
 0x1.952c77030ad4ap-49 -0x1.2f49b46814157p-57  0x1.71b8ef6dcf572p-66 -0x1.761b41316381ap-75
""".split()]

COS = [_hx(s) for s in """
 0x1.0000000000000p+0  -0x1.0000000000000p-1   0x1.5555555555555p-5  -0x1.6c16c16c16c17p-10
 0x1.a01a01a01a01ap-16 -0x1.27e4fb7789f5cp-22  0x1.1eed8eff8d898p-29 -0x1.93974a8c07c9dp-37
 0x1.ae7f3e733b81fp-45 -0x1.6827863b97d97p-53  0x1.e542ba4020225p-62 -0x1.0ce396db7f853p-70
 0x1.f2cf01972f578p-80
""".split()]

F32_MAX = float(np.finfo(np.float32).max)

DENSE_DISTS = {
    "uniform": ("low", "high"),
    "he_uniform": ("bound",),
    "glorot_uniform": ("bound",),
    "normal": ("mean", "std"),
    "he_normal": ("std",),
    "glorot_normal": ("std",),
}

# rng.md 6.7: the substreams of the row orders.
SUBSTREAM_LEVELS = 0  # level pools (6.8)
SUBSTREAM_SHUFFLED = 2  # the `shuffled` block layout (format.md 7.1)
MAX_LEVELS = 65_536  # rng.md 7: a `levels` record holds 1 to 65,536 values

# ==========================================================================
# Philox4x32-10 (rng.md Section 3)
# ==========================================================================


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on numpy uint64 arrays holding u32 words; returns 4 words."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & MASK32 for c in (c0, c1, c2, c3))
    for r in range(10):
        k0_r = np.uint64((k0 + r * PHILOX_W0) % 2**32)
        k1_r = np.uint64((k1 + r * PHILOX_W1) % 2**32)
        p0 = PHILOX_M0 * c0  # exact: both factors < 2^32
        p1 = PHILOX_M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0_r, lo1, hi0 ^ c3 ^ k1_r, lo0
    return c0, c1, c2, c3


def words(seed: int, stream: int, substream: int, n_blocks: int):
    """The four output words of blocks 0..n_blocks-1 (rng.md 3.1), as uint64 arrays."""
    block = np.arange(n_blocks, dtype=np.uint64)
    c0 = block & MASK32
    c1 = block >> np.uint64(32)
    c2 = np.full(n_blocks, stream, dtype=np.uint64)
    c3 = np.full(n_blocks, substream, dtype=np.uint64)
    return philox4x32_10(c0, c1, c2, c3, seed & 0xFFFFFFFF, seed >> 32)


# ==========================================================================
# Exact transcendental functions (rng.md Section 5)
# ==========================================================================


def horner(z: np.ndarray, coeffs) -> np.ndarray:
    acc = np.full_like(z, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * z
        acc = acc + c
    return acc


def ln(u: np.ndarray) -> np.ndarray:
    """ln of positive normal f64 values, exactly as rng.md 5.2."""
    bits = u.view(np.uint64)
    e = (bits >> np.uint64(52)).astype(np.int64) - 1023
    m = ((bits & np.uint64(2**52 - 1)) | np.uint64(1023 << 52)).view(np.float64)
    big = m > SQRT2
    m = np.where(big, m * 0.5, m)
    e = e + big.astype(np.int64)
    s = (m - 1.0) / (m + 1.0)
    w = s * s
    lnm = (s * 2.0) * horner(w, ATANH)
    E = e.astype(np.float64)
    a = E * LN2_HI
    b = E * LN2_LO
    c = b + lnm
    return a + c


def sincos(q: np.ndarray, x: np.ndarray):
    """(sin, cos) of q*pi/2 + x, exactly as rng.md 5.3."""
    z = x * x
    s = x * horner(z, SIN)
    c = horner(z, COS)
    sn = np.select([q == 0, q == 1, q == 2, q == 3], [s, c, -s, -c])
    cs = np.select([q == 0, q == 1, q == 2, q == 3], [c, -s, -c, s])
    return sn, cs


# ==========================================================================
# Distributions (rng.md Section 6)
# ==========================================================================


def u53_int(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a >> np.uint64(5)) << np.uint64(26)) | (b >> np.uint64(6))


def to_f32(x: np.ndarray) -> np.ndarray:
    """Round f64 -> f32 once (ties to even) and canonicalise -0.0 to +0.0."""
    return x.astype(np.float32) + np.float32(0.0)


def uniform_f64(seed, stream, count, low: float, high: float) -> np.ndarray:
    n_blocks = (count + 1) // 2
    w = words(seed, stream, 0, n_blocks)
    # element 2j uses (w0, w1), element 2j+1 uses (w2, w3) of block j
    a = np.stack([w[0], w[2]], axis=1).reshape(-1)[:count]
    b = np.stack([w[1], w[3]], axis=1).reshape(-1)[:count]
    u = u53_int(a, b).astype(np.float64) * TWO_M53
    width = high - low  # one f64 subtraction
    x = u * width
    return x + low


def normal_f64(seed, stream, count, mean: float, std: float) -> np.ndarray:
    n_blocks = (count + 1) // 2
    w0, w1, w2, w3 = words(seed, stream, 0, n_blocks)
    k = u53_int(w0, w1)
    u = (k + np.uint64(1)).astype(np.float64) * TWO_M53
    r = np.sqrt(ln(u) * -2.0)
    q = (w2 >> np.uint64(30)).astype(np.int64)
    frac = ((w2 & np.uint64(0x3FFFFFFF)) << np.uint64(22)) | (w3 >> np.uint64(10))
    x = (frac.astype(np.float64) * TWO_M52) * HALF_PI
    sn, cs = sincos(q, x)
    z = np.stack([r * cs, r * sn], axis=1).reshape(-1)[:count]
    y = z * std
    return y + mean


def dense_f32(dist: str, params: dict, seed, stream, count) -> np.ndarray:
    # A float field may be stored as a msgpack integer (format.md Section 2):
    # its value is what counts, so every parameter becomes an f64 first.
    params = {k: float(v) for k, v in params.items()}
    if dist == "uniform":
        x = uniform_f64(seed, stream, count, params["low"], params["high"])
    elif dist in ("he_uniform", "glorot_uniform"):
        bound = params["bound"]
        x = uniform_f64(seed, stream, count, -bound, bound)
    elif dist == "normal":
        x = normal_f64(seed, stream, count, params["mean"], params["std"])
    elif dist in ("he_normal", "glorot_normal"):
        x = normal_f64(seed, stream, count, 0.0, params["std"])
    else:  # pragma: no cover - validated before
        raise ValueError(f"unknown dense distribution {dist!r}")
    return to_f32(x)


def keep_mask(seed, stream, count, keep_below: int) -> np.ndarray:
    n_blocks = (count + 3) // 4
    w = words(seed, stream, 1, n_blocks)
    flat = np.stack(w, axis=1).reshape(-1)[:count]  # word i&3 of block i>>2
    return flat < np.uint64(keep_below) if keep_below < 2**32 else np.ones(count, bool)


def row_orders(seed, stream, substream: int, rows: int, n: int) -> np.ndarray:
    """rng.md 6.7: sigma_r for rows 0..rows-1 of length n, as a (rows, n) array.

    Element i = r*n + j has the key word i & 3 of block i >> 2 of `substream`
    (as the keep-mask); sigma_r lists the positions of row r ascending by key,
    ties by position (a stable sort of 32-bit integers).
    """
    count = rows * n
    w = words(seed, stream, substream, (count + 3) // 4)
    keys = np.stack(w, axis=1).reshape(-1)[:count].reshape(rows, n)
    return np.argsort(keys, axis=1, kind="stable")


def levels_f32(values, seed, stream, count: int, n: int) -> np.ndarray:
    """rng.md 6.8: the first `count` elements of a level pool with rows of length n.

    Every row holds value v_k exactly m_k = n // K + (1 if k < n mod K) times;
    the sorted pool P is laid out in the row order of substream 0:
    out[r*n + sigma_r[t]] = P[t].  No float arithmetic: the stored values are
    copied.  An element range is drawn by building the rows that hold it.
    """
    if count == 0:
        return np.empty(0, dtype=np.float32)
    K = len(values)
    m = [n // K + (1 if k < n % K else 0) for k in range(K)]
    pool = np.repeat(np.array(values, dtype=np.float32), m)  # P, n values
    rows = -(-count // n)  # ceil: the rows that hold elements 0..count-1
    sigma = row_orders(seed, stream, SUBSTREAM_LEVELS, rows, n)
    out = np.empty((rows, n), dtype=np.float32)
    np.put_along_axis(out, sigma, np.broadcast_to(pool, (rows, n)), axis=1)
    return out.reshape(-1)[:count]


def generate(init: dict, count: int, n: int) -> np.ndarray:
    """The first `count` initial f32 values of an (already validated) init
    record, for a tensor with rows of length `n` (only `levels` depends on n)."""
    seed, stream, dist, params = init["seed"], init["stream"], init["dist"], init["params"]
    if dist in DENSE_DISTS:
        return dense_f32(dist, params, seed, stream, count)
    if dist == "levels":
        return levels_f32(params["values"], seed, stream, count, n)
    kept = keep_mask(seed, stream, count, params["keep_below"])
    if dist == "sparse":
        base = dense_f32(params["base"]["dist"], params["base"]["params"], seed, stream, count)
        return np.where(kept, base, np.float32(0.0)).astype(np.float32)
    if dist == "shared":
        return np.where(kept, np.float32(float(params["value"])), np.float32(0.0)).astype(np.float32)
    raise ValueError(f"unknown distribution {dist!r}")  # pragma: no cover


# ==========================================================================
# Validation helpers
# ==========================================================================


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fail(where: str, msg: str):
    raise ValueError(f"{where}: {msg}")


def _check_keys(where: str, obj, expected: set):
    if not isinstance(obj, dict):
        _fail(where, "expected a map")
    keys = set(obj)
    if keys != expected:
        missing, extra = expected - keys, keys - expected
        _fail(where, f"wrong keys (missing {sorted(missing)}, extra {sorted(map(str, extra))})")


def _check_f32(where: str, field: str, v) -> float:
    """A float field: a msgpack float or integer (not a boolean) whose value is
    exactly a finite f32 value (format.md Section 2, rng.md Section 7)."""
    if _is_int(v):
        if abs(v) > F32_MAX:  # also keeps float(v) from overflowing
            _fail(where, f"field {field!r}: integer beyond the f32 range")
        if float(v) != v:  # not exactly representable in f64, hence not in f32
            _fail(where, f"field {field!r} = {v} is not exactly an f32 value")
        v = float(v)
    if not isinstance(v, float):
        _fail(where, f"field {field!r} must be a number, got {type(v).__name__}")
    if not math.isfinite(v):
        _fail(where, f"field {field!r} is not finite")
    if float(np.float32(v)) != v:
        _fail(where, f"field {field!r} = {v!r} is not exactly an f32 value")
    return v


def _check_density(where, params):
    d = _check_f32(where, "density", params["density"])
    if not 0.0 < d <= 1.0:
        _fail(where, "field 'density' must be in (0, 1]")
    kb = params["keep_below"]
    if not _is_int(kb):
        _fail(where, "field 'keep_below' must be an int")
    if kb != round(d * 2**32) or kb < 1:  # d * 2^32 is exact; round() is ties-to-even
        _fail(where, f"field 'keep_below' = {kb} != round(density * 2^32)")


def _check_dense(where: str, dist, params):
    if not isinstance(dist, str) or dist not in DENSE_DISTS:
        _fail(where, f"unknown or non-dense distribution {dist!r}")
    _check_keys(where + " params", params, set(DENSE_DISTS[dist]))
    p = {k: _check_f32(where, k, params[k]) for k in DENSE_DISTS[dist]}
    if dist == "uniform" and not p["low"] < p["high"]:
        _fail(where, "field 'low' must be < 'high'")
    if "bound" in p and not p["bound"] > 0:
        _fail(where, "field 'bound' must be > 0")
    if "std" in p:
        if not p["std"] > 0:
            _fail(where, "field 'std' must be > 0")
        if abs(p.get("mean", 0.0)) + 16.0 * p["std"] > F32_MAX:
            _fail(where, "field 'std' too large: |mean| + 16*std exceeds f32 max")


def _check_levels(where: str, params) -> None:
    """rng.md 7, `levels`: `values` is an array of 1 to 65,536 f32 values,
    strictly ascending, none -0.0."""
    _check_keys(where + " params", params, {"values"})
    values = params["values"]
    if not isinstance(values, list):
        _fail(where, "field 'values' must be an array")
    if not 1 <= len(values) <= MAX_LEVELS:
        _fail(where, f"field 'values' holds {len(values)} values, not 1 to {MAX_LEVELS}")
    checked = [_check_f32(where, f"values[{k}]", v) for k, v in enumerate(values)]
    for k, v in enumerate(checked):
        if v == 0.0 and math.copysign(1.0, v) < 0:
            _fail(where, f"field 'values[{k}]' is -0.0")
        if k and not checked[k - 1] < v:
            _fail(where, f"field 'values' is not strictly ascending at index {k}")


def check_init(where: str, init) -> None:
    """rng.md Section 7 rules for one init record (format.md 6.2)."""
    _check_keys(where + " init", init, INIT_KEYS)
    if init["rng"] != RNG_NAME:
        _fail(where, f"unknown rng {init['rng']!r}")
    seed, stream, dist, params = init["seed"], init["stream"], init["dist"], init["params"]
    if not _is_int(seed) or not 0 <= seed < 2**64:
        _fail(where, "field 'seed' must be an int in [0, 2^64)")
    if not _is_int(stream) or not 0 <= stream < 2**32:
        _fail(where, "field 'stream' must be an int in [0, 2^32)")
    if not isinstance(dist, str):
        _fail(where, "field 'dist' must be a str")
    if not isinstance(params, dict):
        _fail(where, "field 'params' must be a map")
    if dist in DENSE_DISTS:
        _check_dense(where, dist, params)
    elif dist == "sparse":
        _check_keys(where + " params", params, {"density", "keep_below", "base"})
        _check_density(where, params)
        base = params["base"]
        _check_keys(where + " params.base", base, {"dist", "params"})
        _check_dense(where + " params.base", base["dist"], base["params"])
    elif dist == "shared":
        _check_keys(where + " params", params, {"value", "density", "keep_below"})
        _check_density(where, params)
        if _check_f32(where, "value", params["value"]) == 0.0:
            _fail(where, "field 'value' must be non-zero")
    elif dist == "levels":
        _check_levels(where, params)
    else:
        _fail(where, f"unknown dist {dist!r}")


# ==========================================================================
# Container: preamble, header, records (format.md Sections 4-6, 15)
# ==========================================================================


class _ExtTypeError(ValueError):
    pass


def _no_ext(code, data):
    raise _ExtTypeError(f"header: msgpack extension type {code} is not allowed")


def _check_str_keys(obj, path="header"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                _fail(path, f"map key {k!r} is not a string")
            _check_str_keys(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_str_keys(v, f"{path}[{i}]")


def read_preamble(buf: bytes) -> int:
    """Check the preamble; return header_length."""
    if len(buf) < PREAMBLE_SIZE or buf[:8] != MAGIC:
        raise ValueError("not a permcodec file (bad magic)")
    version, flags, header_length, header_crc = struct.unpack_from("<HHII", buf, 8)
    if version != FORMAT_VERSION:
        raise ValueError(f"UnsupportedVersionError: format version {version}")
    if flags != 0:
        raise ValueError(f"preamble: flags must be 0, got {flags}")
    if header_length > LIMIT_HEADER_LENGTH:
        raise ValueError(f"preamble: header_length {header_length} exceeds limit")
    if header_length > len(buf) - PREAMBLE_SIZE:
        raise ValueError("truncated: header runs past the end of the file")
    header = buf[PREAMBLE_SIZE:PREAMBLE_SIZE + header_length]
    if zlib.crc32(header) != header_crc:
        raise ValueError("header CRC-32 mismatch")
    return header_length


class _DuplicateKeyError(ValueError):
    pass


def _pairs_to_dict(pairs):
    """object_pairs_hook: build a map, refusing a repeated key (Section 5)."""
    out = {}
    for k, v in pairs:
        try:
            dup = k in out
        except TypeError:  # an unhashable key (a map or array); rejected below anyway
            raise _DuplicateKeyError(f"header: map key {k!r} is not a string") from None
        if dup:
            raise _DuplicateKeyError(f"header: map repeats the key {k!r}")
        out[k] = v
    return out


def parse_header(raw: bytes) -> dict:
    try:
        header = msgpack.unpackb(raw, raw=False, ext_hook=_no_ext, strict_map_key=False,
                                 use_list=True, object_pairs_hook=_pairs_to_dict)
    except (_ExtTypeError, _DuplicateKeyError):
        raise
    except Exception as exc:  # msgpack's own errors, incl. trailing bytes, bad UTF-8
        raise ValueError(f"header: invalid msgpack ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError("header: not a msgpack map")
    _check_str_keys(header)
    _check_keys("header", header, {"format", "version", "tensors", "metadata"})
    if header["format"] != "permcodec":
        raise ValueError(f"header: format is {header['format']!r}, not 'permcodec'")
    if not _is_int(header["version"]) or header["version"] != FORMAT_VERSION:
        raise ValueError(f"header: version {header['version']!r} != preamble version")
    meta = header["metadata"]
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("header: metadata must be a map str -> str")
    if not isinstance(header["tensors"], list):
        raise ValueError("header: tensors must be an array")
    return header


def element_count(shape) -> int:
    return math.prod(shape) if shape else 1


SCHEMES = ("delta", "exact", "multiset", "sparse")  # "sparse" from revision 1.6


def check_scheme(where: str, scheme, params, shape) -> None:
    """format.md 6.2: the scheme id and its scheme_params, for a tensor of
    `shape` (a part of a block record: shape [R * c_g, s_g])."""
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        _fail(where, f"unknown index scheme {scheme!r}")
    if not isinstance(params, dict):
        _fail(where, "scheme_params must be a map")
    if scheme == "delta":
        if params != {}:
            _fail(where, "scheme_params must be {} for scheme 'delta'")
        return
    # exact, multiset, sparse: exactly {"lanes": int}, 1 <= lanes <= max(R, 1)
    if set(params) != {"lanes"}:
        _fail(where, f"scheme_params of scheme {scheme!r} must be exactly {{'lanes': int}}, "
                     f"got keys {sorted(map(str, params))}")
    lanes = params["lanes"]
    R, n = rows_of(shape)
    if n > MAX_ARRANGEMENT_N:  # 9.3: whatever the limits, even with R = 0
        _fail(where, f"scheme {scheme!r} needs rows of n <= 2^31, got n = {n}")
    if not _is_int(lanes):
        _fail(where, f"scheme_params.lanes must be an integer, got {type(lanes).__name__}")
    if not 1 <= lanes <= max(R, 1):
        _fail(where, f"scheme_params.lanes = {lanes} is not in [1, {max(R, 1)}] "
                     f"(it has {R} rows)")


def check_blocks(where: str, block, parts, shape, length: int) -> None:
    """format.md 6.2, block records: the `block` map and the `parts` array."""
    _check_keys(where + " block", block, BLOCK_KEYS)
    layout, b = block["layout"], block["size"]
    if not isinstance(layout, str) or layout not in BLOCK_LAYOUTS:
        _fail(where, f"unknown block layout {layout!r}")
    if not _is_int(b) or not 1 <= b <= MAX_BLOCK_SIZE:
        _fail(where, f"block size {b!r} is not an integer in [1, 2^31 - 1]")
    R, n = rows_of(shape)
    runs = block_runs(layout, b, n)
    if not isinstance(parts, list) or len(parts) != len(runs):
        count = len(parts) if isinstance(parts, list) else type(parts).__name__
        _fail(where, f"parts must be an array of {len(runs)} map(s) for layout {layout!r}, "
                     f"size {b} and rows of {n}, got {count}")
    total = 0
    for g, (part, (c, s)) in enumerate(zip(parts, runs)):
        part_where = f"{where} part {g}"
        _check_keys(part_where, part, PART_KEYS)
        # part g is coded as a tensor of R * c rows of length s (7.1)
        check_scheme(part_where, part["scheme"], part["scheme_params"], [R * c, s])
        if not _is_int(part["length"]) or part["length"] < 0:
            _fail(part_where, "field 'length' must be an int >= 0")
        total += part["length"]
    if total != length:
        _fail(where, f"the parts' lengths add up to {total}, not the record's length {length}")


def check_shape(where: str, shape) -> None:
    """format.md 6.1 `shape` and the per-tensor limits of Section 15 (a record's
    shape, or a group member's, 6.4)."""
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        _fail(where, "shape must be an array of ints >= 0")
    if len(shape) > LIMIT_DIMS or any(d > LIMIT_DIM for d in shape):
        _fail(where, "shape exceeds limits")
    # Section 15: each zero dimension counts as 1 here, so that an empty tensor
    # cannot imply huge rows (e.g. [2^20, 0] still has 2^20 rows to walk).
    if math.prod(max(d, 1) for d in shape) > LIMIT_ELEMENTS_PER_TENSOR:
        _fail(where, "element count exceeds limit")


def check_section_fields(where: str, rec: dict, expected_offset: int) -> None:
    """format.md 6.1: `offset`, `length`, `crc32` and `sha256` of any record."""
    for f in ("offset", "length", "crc32"):
        if not _is_int(rec[f]) or rec[f] < 0:
            _fail(where, f"field {f!r} must be an int >= 0")
    if rec["crc32"] >= 2**32:
        _fail(where, "crc32 must be < 2^32")
    if rec["offset"] != expected_offset:
        _fail(where, f"offset {rec['offset']} != expected {expected_offset}")
    if not isinstance(rec["sha256"], bytes) or len(rec["sha256"]) != 32:
        _fail(where, "sha256 must be 32 bytes of bin")


def group_where(index: int, rec: dict) -> str:
    """How errors name a group record: its index in `tensors` and first member."""
    names = rec.get("names") if isinstance(rec, dict) else None
    if isinstance(names, list) and names and isinstance(names[0], str):
        return f"group record {index} ({names[0]!r}, {len(names)} member(s))"
    return f"group record {index}"


def check_group_record(rec: dict, expected_offset: int, index: int) -> None:
    """format.md 6.4 for one group record, except what needs the whole file
    (names unique across the file, positions < T and distinct across groups:
    check_records)."""
    where = f"group record {index}"
    _check_keys(where, rec, GROUP_KEYS)
    names, shapes, positions = rec["names"], rec["shapes"], rec["positions"]
    for field, value in (("names", names), ("shapes", shapes), ("positions", positions)):
        if not isinstance(value, list):
            _fail(where, f"field {field!r} must be an array, got {type(value).__name__}")
    if not len(names) == len(shapes) == len(positions):
        _fail(where, f"names, shapes and positions must have one length, got "
                     f"{len(names)}, {len(shapes)} and {len(positions)}")
    if not names:
        _fail(where, "a group needs at least one member (names is empty)")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            _fail(where, f"names[{i}] must be a non-empty string, got {name!r}")
    where = group_where(index, rec)
    if not isinstance(rec["dtype"], str) or rec["dtype"] not in DTYPES:
        _fail(where, f"unknown dtype {rec['dtype']!r}")
    for name, shape in zip(names, shapes):
        check_shape(f"{where} member {name!r}", shape)
    for i, pos in enumerate(positions):
        if not _is_int(pos) or pos < 0:
            _fail(where, f"positions[{i}] (member {names[i]!r}) must be an int >= 0, got {pos!r}")
    # 6.4 Limits: the group decodes as one array of N elements
    N = sum(element_count(shape) for shape in shapes)
    if N > LIMIT_ELEMENTS_PER_TENSOR:
        _fail(where, f"the group's {N} elements exceed the elements-per-tensor limit")
    check_section_fields(where, rec, expected_offset)
    if rec["codec"] != "shuffle-zstd":
        _fail(where, f"unknown codec {rec['codec']!r}")


def check_record(rec, expected_offset: int, index: int = 0) -> None:
    """format.md 6.1-6.4 for one record (the init part by rng.md 7)."""
    if not isinstance(rec, dict):
        raise ValueError("header: tensor record is not a map")
    kind = rec.get("kind")
    if kind == "group":  # 6.4, revision 1.7: no `name`, no `shape`
        check_group_record(rec, expected_offset, index)
        return
    name = rec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("header: tensor record with missing or empty name")
    where = f"tensor {name!r}"
    blocked = kind == "permuted" and ("block" in rec or "parts" in rec)
    if blocked:
        _check_keys(where, rec, BLOCK_RECORD_KEYS)
    elif kind == "permuted":
        _check_keys(where, rec, PERMUTED_KEYS)
    elif kind == "raw":
        _check_keys(where, rec, RAW_KEYS)
    else:
        _fail(where, f"unknown kind {kind!r}")
    if not isinstance(rec["dtype"], str) or rec["dtype"] not in DTYPES:
        _fail(where, f"unknown dtype {rec['dtype']!r}")
    shape = rec["shape"]
    check_shape(where, shape)
    check_section_fields(where, rec, expected_offset)
    if kind == "permuted":
        if rec["dtype"] != "float32":
            _fail(where, "permuted tensors must be float32")
        if len(shape) < 1:
            _fail(where, "permuted tensors need at least one dimension")
        check_init(where, rec["init"])
        if blocked:
            check_blocks(where, rec["block"], rec["parts"], shape, rec["length"])
        else:
            check_scheme(where, rec["scheme"], rec["scheme_params"], shape)
    elif rec["codec"] != "shuffle-zstd":
        _fail(where, f"unknown codec {rec['codec']!r}")


def check_records(tensors: list) -> int:
    """Check all records and file-level limits; return data_size.

    Revision 1.7: the file holds T tensors, one per permuted or raw record and
    one per group member; names are unique across records and members; every
    member's position is < T and no other member's (6.4)."""
    if len(tensors) > LIMIT_TENSORS:
        raise ValueError("header: too many tensors")
    offset, total_elements, names, streams, T = 0, 0, set(), set(), 0
    for index, rec in enumerate(tensors):
        check_record(rec, offset, index)
        if rec["kind"] == "group":
            where = group_where(index, rec)
            members = list(zip(rec["names"], rec["shapes"]))
        else:
            where = "header"
            members = [(rec["name"], rec["shape"])]
        for name, shape in members:
            if name in names:
                _fail(where, f"duplicate tensor name {name!r}")
            names.add(name)
            total_elements += element_count(shape)
        T += len(members)
        if T > LIMIT_TENSORS:  # 6.4 Limits: the tensors-per-file limit counts T
            raise ValueError(f"header: too many tensors (more than {LIMIT_TENSORS})")
        if rec["kind"] == "permuted":
            key = (rec["init"]["seed"], rec["init"]["stream"])
            if key in streams:
                raise ValueError(f"tensor {rec['name']!r}: (seed, stream) {key} reused")
            streams.add(key)
        offset += rec["length"]
    if total_elements > LIMIT_ELEMENTS_PER_FILE:
        raise ValueError("header: elements per file exceed limit")
    taken = {}  # position -> member name
    for index, rec in enumerate(tensors):
        if rec["kind"] != "group":
            continue
        where = group_where(index, rec)
        for name, pos in zip(rec["names"], rec["positions"]):
            if pos >= T:
                _fail(where, f"member {name!r}: position {pos} is not below T = {T}, "
                             f"the file's tensor count")
            if pos in taken:
                _fail(where, f"member {name!r}: position {pos} is also member "
                             f"{taken[pos]!r}'s")
            taken[pos] = name
    return offset


def tensor_order(tensors: list) -> list[str]:
    """format.md 6.4, tensor order: member i of a group is tensor positions[i]
    of 0..T-1; the permuted and raw records fill the indexes left, in the order
    of the `tensors` list.  Records already checked by check_records."""
    singles = [rec["name"] for rec in tensors if rec["kind"] != "group"]
    T = len(singles) + sum(len(rec["names"]) for rec in tensors if rec["kind"] == "group")
    order = [None] * T
    for rec in tensors:
        if rec["kind"] == "group":
            for name, pos in zip(rec["names"], rec["positions"]):
                order[pos] = name
    rest = iter(singles)
    # positions are < T and distinct, so exactly len(singles) indexes are left
    return [name if name is not None else next(rest) for name in order]


# ==========================================================================
# zstd frames (format.md Section 14)
# ==========================================================================


def zstd_declared_size(where: str, frame: bytes) -> int:
    """Parse the zstd frame header (RFC 8878 3.1.1.1); return Frame_Content_Size."""
    if len(frame) < 5 or frame[:4] != ZSTD_MAGIC:
        _fail(where, "section is not a zstd frame")
    fhd = frame[4]
    fcs_flag, single_segment = fhd >> 6, (fhd >> 5) & 1
    if fhd & 0x08:
        _fail(where, "zstd frame header reserved bit set")
    did_size = [0, 1, 2, 4][fhd & 3]
    fcs_size = [1 if single_segment else 0, 2, 4, 8][fcs_flag]
    pos = 5 + (0 if single_segment else 1)
    if len(frame) < pos + did_size + fcs_size:
        _fail(where, "zstd frame header truncated")
    dict_id = int.from_bytes(frame[pos:pos + did_size], "little")
    if dict_id != 0:
        _fail(where, f"zstd frame uses a dictionary (id {dict_id})")
    pos += did_size
    if fcs_size == 0:
        _fail(where, "zstd frame does not declare its content size")
    size = int.from_bytes(frame[pos:pos + fcs_size], "little")
    return size + 256 if fcs_size == 2 else size


def zstd_decompress(where: str, frame: bytes, implied: int) -> bytes:
    declared = zstd_declared_size(where, frame)
    if declared != implied:
        _fail(where, f"zstd frame declares {declared} bytes, record implies {implied}")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(frame)
    except zstandard.ZstdError as exc:
        _fail(where, f"corrupt zstd frame ({exc})")
    if not dobj.eof:
        _fail(where, "zstd frame is incomplete")
    if dobj.unused_data:
        _fail(where, "bytes after the zstd frame")
    if len(out) != implied:
        _fail(where, f"zstd frame yields {len(out)} bytes, expected {implied}")
    return out


# ==========================================================================
# Section decoders: delta and raw (format.md Sections 7, 8, 13)
# ==========================================================================


def rows_of(shape) -> tuple[int, int]:
    """(R, n) of format.md Section 7; shape has >= 1 dimension."""
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def code_width(n: int) -> int:
    w = 1
    while 2 * (n - 1) >= 256**w:
        w += 1
    return w


def stable_order(rows: np.ndarray) -> np.ndarray:
    """Per-row stable ascending argsort (ties broken by position)."""
    return np.argsort(rows, axis=1, kind="stable")


def ranks_from_order(order: np.ndarray) -> np.ndarray:
    R, n = order.shape
    ranks = np.empty_like(order)
    ranks[np.arange(R)[:, None], order] = np.arange(n)[None, :]
    return ranks


# The index schemes decode "rows": an R x n matrix of trained rows from the
# section, the scheme_params and `initial`, a function returning the R x n
# matrix of initial rows (called only where something is coded).  A tensor of
# whole rows is one such matrix (Section 7); a block record is one per part
# (Section 7.1).


def decode_delta(where: str, R: int, n: int, initial, params: dict, section: bytes) -> np.ndarray:
    """Section 8: zigzag rank differences in W byte planes, one zstd frame."""
    W = code_width(n)
    payload = zstd_decompress(where, section, R * n * W)
    if R * n == 0:
        # 8: an empty payload; nothing is regenerated, allocated or walked per row
        return np.empty((R, n), dtype=np.float32)
    planes = np.frombuffer(payload, dtype=np.uint8).reshape(W, R * n).astype(np.int64)
    z = np.zeros(R * n, dtype=np.int64)
    for k in range(W):
        z |= planes[k] << (8 * k)
    d = np.where(z % 2 == 0, z // 2, -(z + 1) // 2).reshape(R, n)
    init = initial()
    order = stable_order(init)
    a = ranks_from_order(order)
    b = a + d
    check_permutation(where, b, n)
    return np.take_along_axis(init, np.take_along_axis(order, b, axis=1), axis=1)


def check_permutation(where: str, b: np.ndarray, n: int) -> None:
    if b.size == 0:
        return
    if b.min() < 0 or b.max() >= n:
        _fail(where, "decoded ranks out of range: not a permutation")
    seen = np.zeros(b.shape, dtype=bool)
    seen[np.arange(b.shape[0])[:, None], b] = True
    if not seen.all():
        _fail(where, "decoded ranks are not a permutation")


def unshuffle_raw(where: str, dtype_name: str, count: int, section: bytes) -> np.ndarray:
    """Section 13: one zstd frame of count*S shuffled bytes -> the count*S bytes
    in element order (byte k of element i was output byte k*count + i)."""
    size = DTYPES[dtype_name][1]
    shuffled = zstd_decompress(where, section, count * size)
    data = np.frombuffer(shuffled, dtype=np.uint8).reshape(size, count).T.reshape(-1).copy()
    if dtype_name == "bool" and data.size and data.max() > 1:
        _fail(where, "bool tensor holds a byte other than 0 or 1")
    return data


def decode_raw(where: str, rec: dict, section: bytes) -> np.ndarray:
    data = unshuffle_raw(where, rec["dtype"], element_count(rec["shape"]), section)
    return data.view(DTYPES[rec["dtype"]][0]).reshape(rec["shape"])


def decode_group(where: str, rec: dict, section: bytes) -> list[np.ndarray]:
    """Section 6.4: decode the group's N elements as one raw tensor, check the
    SHA-256 of the group's bytes, then split them into the members (member i is
    elements s_i .. s_i + N_i - 1), in the order of `names`."""
    dtype, size = DTYPES[rec["dtype"]]
    counts = [element_count(shape) for shape in rec["shapes"]]
    data = unshuffle_raw(where, rec["dtype"], sum(counts), section)
    if hashlib.sha256(data.tobytes()).digest() != rec["sha256"]:
        _fail(where, "SHA-256 of the group's decoded bytes does not match")
    members, start = [], 0
    for count, shape in zip(counts, rec["shapes"]):
        members.append(data[start * size:(start + count) * size].view(dtype).reshape(shape))
        start += count
    return members


# ==========================================================================
# Arrangement coding: schemes exact, multiset and sparse (format.md Sections 9-11a)
# ==========================================================================

RANS_M = 2**31  # probability scale M (9.2)
RANS_L = 2**32  # lower end of the state interval [L, 2^64) (9.2)
WORD = 2**32  # words are 32 bits
MAX_ARRANGEMENT_N = 2**31  # 9.3: exact, multiset and sparse need n <= 2^31


def interval(C: int, m: int, Q: int) -> tuple[int, int]:
    """(start, freq) of a coded symbol [C, C + m) of [0, Q) (9.1)."""
    start = C * RANS_M // Q
    freq = (C + m) * RANS_M // Q - start
    return start, freq


class Lane:
    """One rANS stream of 32-bit words (9.2, decoding)."""

    def __init__(self, where: str, words: list[int]):
        self.where = where
        self.words = words
        self.pos = 2
        # word_count >= 2 was checked with the section layout (9.3)
        self.x = words[0] * WORD + words[1]
        if self.x < RANS_L:
            _fail(where, f"initial rANS state {self.x:#x} < 2^32")

    def decode(self, Q: int, select):
        """Steps 2-3 of 9.2 for one coded position with Q positions left.

        `select(t)` returns (symbol, C, m): the symbol whose [C, C + m) holds t.
        """
        y = self.x % RANS_M
        t = ((y + 1) * Q - 1) // RANS_M  # 0 <= t < Q
        symbol, C, m = select(t)
        assert 0 <= C <= t < C + m <= Q
        start, freq = interval(C, m, Q)
        assert freq >= 1 and start <= y < start + freq
        self.x = freq * (self.x // RANS_M) + y - start
        if self.x < RANS_L:
            if self.pos == len(self.words):
                _fail(self.where, "rANS lane ran out of words")
            self.x = self.x * WORD + self.words[self.pos]
            self.pos += 1
        return symbol

    def finish(self) -> None:
        """9.2: after the last row the state is L and every word has been read."""
        if self.x != RANS_L:
            _fail(self.where, f"rANS lane ends in state {self.x:#x}, not 2^32")
        if self.pos != len(self.words):
            _fail(self.where, f"rANS lane has {len(self.words) - self.pos} unread word(s)")


def _digit(t: int):
    """exact (9.1): the digit d = t, with C = d and m = 1."""
    return t, t, 1


def decode_exact_row(lane: Lane, n: int) -> list[int]:
    """Section 10: the swap-code digits d_0 .. d_{n-2} of one row, applied to
    a = [0 .. n-1]; returns pi = a."""
    a = list(range(n))
    for p in range(n):
        Q = n - p
        if Q == 1:
            d = 0  # position n - 1: m = Q, not coded; the state is unchanged
        else:
            d = lane.decode(Q, _digit)
        i = p + d
        a[p], a[i] = a[i], a[p]  # a no-op for p = n - 1 (d = 0)
    return a


class ClassCounts:
    """The `left_c` of one multiset row (9.1), with `C` and the search of 9.2 step 2.

    A Fenwick (binary indexed) tree over the counts gives both "occurrences left
    in classes below c" and "the class holding the t-th occurrence left" in
    O(log K) steps.
    """

    def __init__(self, counts):
        self.K = len(counts)
        self.left = list(counts)
        self.live = sum(1 for m in counts if m > 0)
        self.tree = [0] * (self.K + 1)  # tree[i] = sum of left over a block ending at i-1
        for i, m in enumerate(counts, start=1):
            self.tree[i] += m
            parent = i + (i & -i)
            if parent <= self.K:
                self.tree[parent] += self.tree[i]

    def select(self, t: int):
        """(c, C, left_c) for the class c with C <= t < C + left_c (t counts from 0)."""
        pos, rem = 0, t
        step = 1 << self.K.bit_length()
        while step:
            nxt = pos + step
            if nxt <= self.K and self.tree[nxt] <= rem:
                pos, rem = nxt, rem - self.tree[nxt]
            step >>= 1
        # pos = the largest number of leading classes whose counts sum to <= t
        return pos, t - rem, self.left[pos]

    def take(self, c: int) -> None:
        """left_c decreases by one (9.2 step 4)."""
        self.left[c] -= 1
        if self.left[c] == 0:
            self.live -= 1
        i = c + 1
        while i <= self.K:
            self.tree[i] -= 1
            i += i & -i


def decode_multiset_row(lane: Lane, counts: list[int]) -> list[int]:
    """Section 11: the classes s_0 .. s_{n-1} of one row with class counts m_c."""
    n = sum(counts)
    left = ClassCounts(counts)
    symbols = []
    for p in range(n):
        Q = n - p  # positions left
        if left.live == 1:
            c = left.select(0)[0]  # only class left: m = Q, not coded
        else:
            c = lane.decode(Q, left.select)
        left.take(c)
        symbols.append(c)
    return symbols


def split_lanes(where: str, section: bytes, lanes: int) -> list[list[int]]:
    """Section layout of 9.3: word_count[lanes], then the words of each lane."""
    if len(section) < 4 * lanes:
        _fail(where, f"section of {len(section)} bytes is too short for {lanes} word counts")
    counts = struct.unpack_from(f"<{lanes}I", section, 0)
    for j, wc in enumerate(counts):
        if wc < 2:
            _fail(where, f"lane {j}: word_count {wc} < 2")
    expected = 4 * lanes + 4 * sum(counts)  # Python ints: no overflow
    if len(section) != expected:
        _fail(where, f"section length {len(section)} != 4*lanes + 4*sum(word_count) = {expected}")
    words = struct.unpack_from(f"<{sum(counts)}I", section, 4 * lanes)
    out, pos = [], 0
    for wc in counts:
        out.append(list(words[pos:pos + wc]))
        pos += wc
    return out


def decode_lanes(where: str, section: bytes, lanes: int, R: int, decode_row) -> list:
    """9.3: row r belongs to lane r mod lanes; decode_row(lane, r) -> row symbols."""
    streams = split_lanes(where, section, lanes)
    rows = [None] * R
    for j, lane_words in enumerate(streams):
        lane = Lane(f"{where} lane {j}", lane_words)
        for r in range(j, R, lanes):
            rows[r] = decode_row(lane, r)
        lane.finish()
    return rows


def codes_nothing(where: str, section: bytes, lanes: int, R: int, n: int) -> bool:
    """9.3: with R = 0 or n <= 1 nothing is coded and every lane is exactly the
    two words of the state L; checked without walking the rows."""
    if R > 0 and n > 1:
        return False
    for j, lane_words in enumerate(split_lanes(where, section, lanes)):
        if lane_words != [RANS_L >> 32, RANS_L & 0xFFFFFFFF]:
            _fail(where, f"lane {j} of a tensor that codes nothing is not exactly the state 2^32")
    return True


def decode_exact(where: str, R: int, n: int, initial, params: dict, section: bytes) -> np.ndarray:
    """Section 10: swap-code digits -> pi; tensor[r][j] = init[r][pi_r[j]]."""
    lanes = params["lanes"]
    if codes_nothing(where, section, lanes, R, n):
        # n <= 1: the only permutation is the identity, so the rows are the initial ones
        return initial()
    init = initial()
    pi = decode_lanes(where, section, lanes, R, lambda lane, r: decode_exact_row(lane, n))
    pi = np.array(pi, dtype=np.int64).reshape(R, n)
    return np.take_along_axis(init, pi, axis=1)


def row_classes(row: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Section 11: the runs of equal bits of the sorted row -> (m_c, v_c)."""
    pool = np.sort(row)  # no -0.0 or NaN in a pool: value order is well defined
    if pool.size == 0:
        return [], pool
    bits = pool.view(np.uint32)
    firsts = np.flatnonzero(np.concatenate(([True], bits[1:] != bits[:-1])))
    counts = np.diff(np.append(firsts, pool.size))
    return [int(m) for m in counts], pool[firsts]


def decode_multiset(where: str, R: int, n: int, initial, params: dict, section: bytes) -> np.ndarray:
    """Section 11: class c = c-th smallest distinct value of the initial row."""
    lanes = params["lanes"]
    if codes_nothing(where, section, lanes, R, n):
        # n <= 1: one class, one position, so the rows are the initial ones
        return initial()
    init = initial()
    classes = [row_classes(init[r]) for r in range(R)]
    symbols = decode_lanes(where, section, lanes, R,
                           lambda lane, r: decode_multiset_row(lane, classes[r][0]))
    out = np.empty((R, n), dtype=np.float32)
    for r in range(R):
        out[r] = classes[r][1][np.array(symbols[r], dtype=np.int64)]
    return out


ZERO = -1  # sparse (11a): the zero symbol, as returned by decode_sparse_row


class SparseLeft:
    """The `k` items and `z` zeros not yet placed in one sparse row (9.1, 11a)."""

    def __init__(self, k: int, z: int):
        self.k, self.z = k, z

    def coded(self) -> bool:
        """9.1: a position is not coded exactly when k = 0, or k = 1 and z = 0."""
        return not (self.k == 0 or (self.k == 1 and self.z == 0))

    def select(self, t: int):
        """9.2 step 2: the item digit d = t (C = d, m = 1) if t < k, else the
        zero symbol (C = k, m = z)."""
        if t < self.k:
            return t, t, 1
        return ZERO, self.k, self.z


def decode_sparse_row(lane: Lane, K: int, z: int) -> list[int]:
    """Section 11a: the trained row as item numbers (ZERO for a zero) of one row
    with K items and z zeros.  Item digit d takes item a[taken + d], swaps
    a[taken] and a[taken + d] and advances taken (swap code of Section 10)."""
    n = K + z
    left = SparseLeft(K, z)
    a = list(range(K))
    taken = 0
    out = []
    for p in range(n):
        Q = n - p  # = k + z
        if left.coded():
            d = lane.decode(Q, left.select)
        else:  # the only possible symbol: a zero when k = 0, else the last item
            d = ZERO if left.k == 0 else 0
        if d == ZERO:
            out.append(ZERO)
            left.z -= 1
        else:
            i = taken + d
            out.append(a[i])
            a[taken], a[i] = a[i], a[taken]
            taken += 1
            left.k -= 1
    return out


def decode_sparse(where: str, R: int, n: int, initial, params: dict, section: bytes) -> np.ndarray:
    """Section 11a: zeros (all bits zero) of the initial row as one class, its
    other elements (items, in position order) by the swap code."""
    lanes = params["lanes"]
    if codes_nothing(where, section, lanes, R, n):
        # n <= 1: one position, one possible symbol, so the rows are the initial ones
        return initial()
    init = initial()
    items = []
    for r in range(R):
        row = init[r]
        items.append(row[row.view(np.uint32) != 0])  # item_0 .. item_{K-1}, position order
    symbols = decode_lanes(where, section, lanes, R,
                           lambda lane, r: decode_sparse_row(lane, len(items[r]), n - len(items[r])))
    out = np.zeros((R, n), dtype=np.float32)  # the zero symbol writes +0.0
    for r in range(R):
        e = np.array(symbols[r], dtype=np.int64)
        placed = e != ZERO
        out[r, placed] = items[r][e[placed]]
    return out


ROW_DECODERS = {"delta": decode_delta, "exact": decode_exact, "multiset": decode_multiset,
                "sparse": decode_sparse}


# ==========================================================================
# Blocks (format.md Section 7.1, revision 1.4)
# ==========================================================================


def block_runs(layout: str, b: int, n: int) -> list[tuple[int, int]]:
    """The runs (c, s) of a row of length n: c blocks of s positions each,
    in grouped order; their number G is the length of `parts`."""
    if n <= b:
        return [(1, n)]  # one block, the whole row (also for n = 0)
    if layout == "contiguous":
        runs = [(n // b, b), (1, n % b)]
    else:  # strided, shuffled
        q = -(-n // b)  # ceil(n / b) blocks
        s, e = n // q, n % q
        runs = [(e, s + 1), (q - e, s)]
    return [(c, s) for c, s in runs if c > 0 and s > 0]


def strided_order(n: int, q: int) -> np.ndarray:
    """Positions 0..n-1 grouped by block j mod q, blocks ascending, each block's
    positions ascending: t, t + q, t + 2q, ... for block t."""
    return np.argsort(np.arange(n) % q, kind="stable")


def grouped_order(block: dict, init: dict, R: int, n: int) -> np.ndarray:
    """The grouped order of every row, as an (R, n) array of positions (7.1)."""
    layout, b = block["layout"], block["size"]
    if layout == "contiguous":  # blocks [0, b), [b, 2b), ...: already grouped
        return np.broadcast_to(np.arange(n), (R, n))
    q = -(-n // b)  # 1 when n <= b: one block, the whole row
    by_block = strided_order(n, q)
    if layout == "strided":
        return np.broadcast_to(by_block, (R, n))
    # shuffled: strided applied to the Philox order sigma_r (rng.md 6.7, substream 2);
    # block t holds sigma_r[t], sigma_r[t + q], ... in that order
    sigma = row_orders(init["seed"], init["stream"], SUBSTREAM_SHUFFLED, R, n)
    return sigma[:, by_block]


def decode_blocks(where: str, rec: dict, section: bytes) -> np.ndarray:
    """7.1: decode each part as a matrix of blocks, then put every block back.

    Reordering each row of the R x n tensor into grouped order, run g is the
    columns [sum_{h<g} c_h s_h, sum_{h<=g} c_h s_h), read row by row as a
    matrix of R * c_g rows of length s_g; part g codes that matrix exactly as
    a tensor of whole rows is coded (so ties in `delta` ranks are broken by
    the column of that matrix, not by the position in the tensor row).
    """
    shape = rec["shape"]
    R, n = rows_of(shape)
    runs = block_runs(rec["block"]["layout"], rec["block"]["size"], n)
    if R * n == 0:
        # No element: nothing to regenerate or reorder (Sections 8, 9.3, 15).
        # Each part is an empty matrix whose section is still checked.
        order, view = None, np.empty((R, n), dtype=np.float32)
    else:
        init = generate(rec["init"], R * n, n).reshape(R, n)
        order = grouped_order(rec["block"], rec["init"], R, n)
        view = np.take_along_axis(init, order, axis=1)  # rows in grouped order
    trained = np.empty_like(view)
    col = pos = 0
    for g, ((c, s), part) in enumerate(zip(runs, rec["parts"])):
        cols = slice(col, col + c * s)
        part_section = section[pos:pos + part["length"]]  # parts lie back to back
        blocks = ROW_DECODERS[part["scheme"]](
            f"{where} part {g}", R * c, s, lambda: view[:, cols].reshape(R * c, s),
            part["scheme_params"], part_section)
        trained[:, cols] = blocks.reshape(R, c * s)
        col, pos = col + c * s, pos + part["length"]
    if order is None:
        return trained.reshape(shape)
    out = np.empty((R, n), dtype=np.float32)
    np.put_along_axis(out, order, trained, axis=1)  # every block back to its positions
    return out.reshape(shape)


def decode_whole_rows(where: str, rec: dict, section: bytes) -> np.ndarray:
    """A permuted record without blocks: one matrix of R rows of length n."""
    R, n = rows_of(rec["shape"])
    rows = ROW_DECODERS[rec["scheme"]](
        where, R, n, lambda: generate(rec["init"], R * n, n).reshape(R, n),
        rec["scheme_params"], section)
    return rows.reshape(rec["shape"])


def tensor_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).tobytes()


def read_section(where: str, rec: dict, buf: bytes, data_start: int) -> bytes:
    """A record's section bytes, its length and CRC-32 checked (Section 15)."""
    start = data_start + rec["offset"]
    section = buf[start:start + rec["length"]]
    if len(section) != rec["length"]:
        _fail(where, "truncated section")
    if zlib.crc32(section) != rec["crc32"]:
        _fail(where, "section CRC-32 mismatch")
    return section


def decode_section(rec: dict, buf: bytes, data_start: int) -> np.ndarray:
    """Decode one permuted or raw record and check its SHA-256."""
    where = f"tensor {rec['name']!r}"
    section = read_section(where, rec, buf, data_start)
    if rec["kind"] == "permuted" and "block" in rec:
        arr = decode_blocks(where, rec, section)
    elif rec["kind"] == "permuted":
        arr = decode_whole_rows(where, rec, section)
    else:
        arr = decode_raw(where, rec, section)
    if hashlib.sha256(tensor_bytes(arr)).digest() != rec["sha256"]:
        _fail(where, "SHA-256 of the decoded tensor does not match")
    return arr


# ==========================================================================
# Public API
# ==========================================================================


def decode_file(path) -> dict[str, np.ndarray]:
    """Decode every tensor of a `.pc` file; raise ValueError on any violation.

    The dict lists the tensors in the file's tensor order (format.md 6.4).
    bfloat16 tensors come back as uint16 arrays of their raw bits.
    """
    with open(path, "rb") as fh:
        buf = fh.read()
    header_length = read_preamble(buf)
    header = parse_header(buf[PREAMBLE_SIZE:PREAMBLE_SIZE + header_length])
    data_size = check_records(header["tensors"])
    expected = PREAMBLE_SIZE + header_length + data_size
    if len(buf) < expected:
        raise ValueError(f"truncated: file has {len(buf)} bytes, expected {expected}")
    if len(buf) > expected:
        raise ValueError("unexpected bytes after the last section")
    data_start = PREAMBLE_SIZE + header_length
    decoded = {}
    for index, rec in enumerate(header["tensors"]):
        if rec["kind"] == "group":  # 6.4: decoded once, then split
            where = group_where(index, rec)
            section = read_section(where, rec, buf, data_start)
            decoded.update(zip(rec["names"], decode_group(where, rec, section)))
        else:
            decoded[rec["name"]] = decode_section(rec, buf, data_start)
    return {name: decoded[name] for name in tensor_order(header["tensors"])}


def main(argv=None) -> int:
    for path in (sys.argv[1:] if argv is None else argv):
        t0 = time.perf_counter()
        tensors = decode_file(path)
        dt = time.perf_counter() - t0
        print(f"{path}  ({dt * 1000:.1f} ms)")
        for name, arr in tensors.items():
            digest = hashlib.sha256(tensor_bytes(arr)).hexdigest()
            print(f"  {name}  {list(arr.shape)}  {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
