"""The .pc container: preamble, msgpack header, data sections. Bytes and headers only, no torch.

    preamble (20 bytes) | header (msgpack, header_length bytes) | data area (the sections, back to back)

See specs/format.md. Everything read here is untrusted: lengths are checked
against limits and against the bytes actually present before anything is
allocated, msgpack is parsed with strict bounds and no extension types, and
each section's CRC-32 is checked when it is read.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import msgpack

from .errors import FormatError, IntegrityError, LimitError, UnsupportedVersionError

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

def parse_preamble(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(header_length, header_crc32) from the first 20 bytes."""
    if len(data) < PREAMBLE_SIZE:
        if not MAGIC.startswith(bytes(data[:len(MAGIC)])) or len(data) == 0:
            raise FormatError("not a permcodec file: bad magic")
        raise FormatError(f"truncated file: {len(data)} bytes, the preamble alone is {PREAMBLE_SIZE}")
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


def _reject_ext(code, data):
    raise FormatError(f"header holds a msgpack extension type ({code}); none is allowed")


def parse_header(raw: bytes, header_crc: int, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Check the CRC, unpack the msgpack header strictly and validate its structure and limits."""
    if crc32(raw) != header_crc:
        raise IntegrityError(f"header CRC-32 mismatch: stored {header_crc:#010x}, computed {crc32(raw):#010x}")
    try:
        # unpackb caps every string, array and map length at len(raw).
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, ext_hook=_reject_ext,
                                 object_pairs_hook=_unique_map)
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
