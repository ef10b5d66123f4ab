"""The .pc container: preamble, msgpack header, data sections. Bytes and headers only, no torch.

    preamble (20 bytes) | header (msgpack, header_length bytes) | data area (the sections, back to back)

See specs/format.md. Everything read here is untrusted: lengths are checked
against limits and against the bytes actually present before anything is
allocated, msgpack is parsed with strict bounds and no extension types, and
each section's CRC-32 is checked when it is read.

``parse_header`` validates every field of every record, the kind-specific
ones included (init record, scheme and its parameters, raw codec), once.
Whatever reads a parsed header (decode, lazy reads, info, verify) can rely on
it and never meets a field of the wrong key set, type or range.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import msgpack

from ..errors import FormatError, IntegrityError, LimitError, SpecError, UnsupportedVersionError
from ..init import distparams
from ..init.philox import RNG_NAME, check_seed, check_stream
from ..rows import row_shape
from .rans import MAX_ROW_LENGTH

MAGIC = b"\x89PCODEC\n"
FORMAT_NAME = "permcodec"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sHHII")  # magic, version, flags, header_length, header_crc32
PREAMBLE_SIZE = PREAMBLE.size

DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4,
               "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
KINDS = ("permuted", "raw")
HEADER_KEYS = {"format", "version", "tensors", "metadata"}
COMMON_RECORD_KEYS = {"name", "kind", "dtype", "shape", "offset", "length", "crc32", "sha256"}
RECORD_KEYS = {"permuted": COMMON_RECORD_KEYS | {"init", "scheme", "scheme_params"},
               "raw": COMMON_RECORD_KEYS | {"codec"}}
INIT_KEYS = {"rng", "seed", "stream", "dist", "params"}
# Index schemes of permuted records (specs/format.md Sections 8-11) and codecs of raw ones (Section 13).
DELTA, EXACT, MULTISET = "delta", "exact", "multiset"
SCHEMES = (DELTA, EXACT, MULTISET)
RAW_CODEC = "shuffle-zstd"
# Containers (arrays and maps) a header may hold per tensor: the record, its shape, init, params,
# a sparse base and its params, scheme_params. Beyond this the header cannot be valid; the cap stops
# a header of empty containers from growing ~60x in memory while it is parsed.
CONTAINERS_PER_TENSOR = 8


@dataclass(frozen=True)
class Limits:
    """Decoder caps; a file beyond any of them raises LimitError before allocating."""

    max_header_bytes: int = 64 << 20
    max_tensors: int = 100_000
    max_dims: int = 8
    max_dim: int = 2**31 - 1
    max_tensor_elements: int = 2**31 - 1
    max_total_elements: int = 2**36


DEFAULT_LIMITS = Limits()


def limits_or_default(limits: Limits | None) -> Limits:
    """``limits``, or DEFAULT_LIMITS as it is at call time (a fuzzer may lower it process-wide)."""
    return DEFAULT_LIMITS if limits is None else limits


def crc32(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


# ---------------------------------------------------------------- writing

def pack(tensors: list[dict], sections: list[bytes], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a .pc file; fills each record's offset, length and crc32 from its section."""
    offset = 0
    records = []
    for record, section in zip(tensors, sections, strict=True):
        records.append({**record, "offset": offset, "length": len(section), "crc32": crc32(section)})
        offset += len(section)
    header = msgpack.packb({"format": FORMAT_NAME, "version": FORMAT_VERSION, "tensors": records,
                            "metadata": dict(metadata or {})}, use_bin_type=True)
    preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header), crc32(header))
    return b"".join([preamble, header, *sections])


# ---------------------------------------------------------------- reading

def parse_preamble(data: bytes, limits: Limits | None = None) -> tuple[int, int]:
    """(header_length, header_crc32) from the first 20 bytes."""
    if len(data) < PREAMBLE_SIZE:
        if not MAGIC.startswith(bytes(data[:len(MAGIC)])) or len(data) == 0:
            raise FormatError("not a permcodec file: bad magic")
        raise FormatError(f"truncated file: {len(data)} bytes, the preamble alone is {PREAMBLE_SIZE}")
    limits = limits_or_default(limits)
    magic, version, flags, header_length, header_crc = PREAMBLE.unpack(bytes(data[:PREAMBLE_SIZE]))
    if magic != MAGIC:
        hint = "; it looks like a torch checkpoint: 'permcodec encode' turns it into one" \
            if magic.startswith(b"PK\x03\x04") else ""
        raise FormatError(f"not a permcodec file: bad magic {magic!r}, expected {MAGIC!r}{hint}")
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(f"format version {version} is not supported (this decoder reads "
                                      f"version {FORMAT_VERSION})")
    if flags != 0:
        raise FormatError(f"preamble flags must be 0, found {flags:#06x}")
    if header_length > limits.max_header_bytes:
        raise LimitError(f"header_length {header_length} exceeds the limit of {limits.max_header_bytes} bytes")
    return header_length, header_crc


def _unique_map(pairs):
    """A dict from msgpack map pairs: string keys, each once (two decoders must never read different values)."""
    for key, _ in pairs:
        if not isinstance(key, str):
            raise FormatError(f"header map key {key!r} is not a string")
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise FormatError(f"header map holds key {duplicate!r} twice")
    return result


class _ContainerBudget:
    """msgpack hooks that count the header's arrays and maps and stop the parse past ``cap``."""

    def __init__(self, cap: int):
        self.left = cap

    def _spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise FormatError("header holds more arrays and maps than its tensors can use")

    def array(self, items: list) -> list:
        self._spend()
        return items

    def map(self, pairs) -> dict:
        self._spend()
        return _unique_map(pairs)


def _reject_ext(code, data):
    raise FormatError(f"header holds a msgpack extension type ({code}); none is allowed")


def parse_header(raw: bytes, header_crc: int, limits: Limits | None = None) -> dict:
    """Check the CRC, unpack the msgpack header strictly and validate its structure and limits."""
    limits = limits_or_default(limits)
    if crc32(raw) != header_crc:
        raise IntegrityError(f"header CRC-32 mismatch: stored {header_crc:#010x}, computed {crc32(raw):#010x}")
    budget = _ContainerBudget(CONTAINERS_PER_TENSOR * limits.max_tensors + 16)
    try:
        # unpackb caps every string and map length at len(raw); arrays are capped lower, at the longest
        # a valid header holds, so that a claimed count never sizes an allocation.
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, ext_hook=_reject_ext,
                                 object_pairs_hook=budget.map, list_hook=budget.array,
                                 max_array_len=min(len(raw), max(limits.max_tensors, limits.max_dims) + 1))
    except msgpack.ExtraData as err:
        raise FormatError(f"header holds {len(err.extra)} bytes after its map, within header_length") from None
    except (ValueError, msgpack.UnpackException) as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"header is not valid msgpack: {type(err).__name__}: {err}") from None
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        found = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise FormatError(f"header must be a map with keys {sorted(HEADER_KEYS)}, found {found}")
    if header["format"] != FORMAT_NAME:
        raise FormatError(f"header format must be {FORMAT_NAME!r}, found {header['format']!r}")
    if type(header["version"]) is not int or header["version"] != FORMAT_VERSION:
        raise UnsupportedVersionError(f"header version {header['version']!r} is not supported")
    metadata = header["metadata"]
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("header metadata must be a map of strings to strings")
    tensors = header["tensors"]
    if not isinstance(tensors, list):
        raise FormatError("header tensors must be a list")
    if len(tensors) > limits.max_tensors:
        raise LimitError(f"{len(tensors)} tensors exceed the limit of {limits.max_tensors}")
    names, total, offset = set(), 0, 0
    for index, record in enumerate(tensors):
        _check_record(record, index, limits)
        if record["name"] in names:
            raise FormatError(f"tensor name {record['name']!r} appears twice")
        names.add(record["name"])
        if record["offset"] != offset:
            raise FormatError(f"tensor {record['name']!r}: section offset {record['offset']}, expected {offset} "
                              f"(sections are back to back in tensor order)")
        offset += record["length"]
        total += math.prod(record["shape"])
        if total > limits.max_total_elements:
            raise LimitError(f"total element count exceeds the limit of {limits.max_total_elements}")
    return header


def extent(shape) -> int:
    """Elements of a shape with every zero dimension counted as 1.

    Capping this, not just the element count, keeps an empty tensor such as
    [0, 2^20, 2^20] from implying 2^40-long rows that a decoder would allocate for.
    """
    return math.prod(max(size, 1) for size in shape)


def _is_uint(value, bits: int = 64) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**bits


def _check_record(record, index: int, limits: Limits) -> None:
    if not isinstance(record, dict) or not COMMON_RECORD_KEYS <= set(record):
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise FormatError(f"tensor record {index} must be a map with keys {sorted(COMMON_RECORD_KEYS)}, "
                          f"found {found}")
    name = record["name"]
    if not isinstance(name, str) or not name:
        raise FormatError(f"tensor record {index}: name must be a non-empty string, found {name!r}")
    where = f"tensor {name!r}"
    if not isinstance(record["kind"], str) or record["kind"] not in KINDS:
        raise FormatError(f"{where}: kind must be one of {', '.join(KINDS)}, found {record['kind']!r}")
    if not isinstance(record["dtype"], str) or record["dtype"] not in DTYPE_SIZES:
        raise FormatError(f"{where}: unknown dtype {record['dtype']!r}")
    shape = record["shape"]
    if not isinstance(shape, list) or not all(_is_uint(s) for s in shape):
        raise FormatError(f"{where}: shape must be a list of non-negative integers, found {shape!r}")
    if len(shape) > limits.max_dims:
        raise LimitError(f"{where}: {len(shape)} dimensions exceed the limit of {limits.max_dims}")
    if any(s > limits.max_dim for s in shape):
        raise LimitError(f"{where}: dimension {max(shape)} exceeds the limit of {limits.max_dim}")
    if extent(shape) > limits.max_tensor_elements:
        raise LimitError(f"{where}: {extent(shape)} elements exceed the limit of {limits.max_tensor_elements}"
                         + (" (a zero dimension counts as 1)" if 0 in shape else ""))
    for key in ("offset", "length"):
        if not _is_uint(record[key]):
            raise FormatError(f"{where}: {key} must be a non-negative 64-bit integer, found {record[key]!r}")
    if not _is_uint(record["crc32"], 32):
        raise FormatError(f"{where}: crc32 must be a 32-bit unsigned integer, found {record['crc32']!r}")
    if not isinstance(record["sha256"], bytes) or len(record["sha256"]) != 32:
        raise FormatError(f"{where}: sha256 must be 32 bytes")
    expected = RECORD_KEYS[record["kind"]]
    if set(record) != expected:
        raise FormatError(f"{where}: a {record['kind']} record must have keys {sorted(expected)}, "
                          f"found {sorted(record)}")
    if record["kind"] == "raw":
        if record["codec"] != RAW_CODEC:
            raise FormatError(f"{where}: unknown raw codec {record['codec']!r} (expected {RAW_CODEC!r})")
        return
    if record["dtype"] != "float32":
        raise FormatError(f"{where}: permuted tensors are float32, found {record['dtype']!r}")
    if not shape:
        raise FormatError(f"{where}: a permuted tensor needs at least one dimension")
    rows, n = row_shape(shape)
    check_scheme_params(record["scheme"], record["scheme_params"], rows, n, where)
    record["init"] = checked_init(record["init"], where)


def checked_init(init, where: str) -> dict:
    """A permuted record's ``init`` map with every field checked (specs/rng.md §7); float params as floats."""
    if not isinstance(init, dict) or set(init) != INIT_KEYS:
        raise FormatError(f"{where}: init must be a map with keys {sorted(INIT_KEYS)}")
    if init["rng"] != RNG_NAME:
        raise FormatError(f"{where}: unknown rng {init['rng']!r} (this decoder knows {RNG_NAME!r})")
    try:
        if not isinstance(init["dist"], str):
            raise SpecError(f"{where}: dist must be a string, found {init['dist']!r}")
        return {"rng": RNG_NAME, "seed": check_seed(init["seed"]), "stream": check_stream(init["stream"]),
                "dist": init["dist"], "params": distparams.validate(init["dist"], init["params"], where)}
    except SpecError as err:
        raise FormatError(f"bad init record: {err}") from None


def check_scheme_params(scheme, params, rows: int, n: int, where: str) -> None:
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise FormatError(f"{where}: unknown index scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if scheme == DELTA:
        if params != {}:
            raise FormatError(f"{where}: scheme 'delta' takes no parameters, found {params!r}")
        return
    if not isinstance(params, dict) or set(params) != {"lanes"}:
        raise FormatError(f"{where}: scheme {scheme!r} takes exactly the parameter 'lanes', found {params!r}")
    lanes = params["lanes"]
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= max(rows, 1):
        raise FormatError(f"{where}: lanes must be an integer in [1, {max(rows, 1)}] (the row count), "
                          f"found {lanes!r}")
    if n > MAX_ROW_LENGTH:
        raise FormatError(f"{where}: scheme {scheme!r} needs rows of at most 2^31 elements, found {n}")


def data_size(header: dict) -> int:
    """Bytes of the data area the header describes."""
    return sum(record["length"] for record in header["tensors"])


def check_section(record: dict, section: bytes) -> bytes:
    """The section of ``record`` after its length and CRC-32 check."""
    if len(section) != record["length"]:
        raise FormatError(f"tensor {record['name']!r}: section truncated ({len(section)} of "
                          f"{record['length']} bytes)")
    if crc32(section) != record["crc32"]:
        raise IntegrityError(f"tensor {record['name']!r}: section CRC-32 mismatch (stored {record['crc32']:#010x},"
                             f" computed {crc32(section):#010x})")
    return section
