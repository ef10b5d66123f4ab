"""The .pc container: preamble, msgpack header, data sections. Bytes and headers only, no torch.

    preamble (20 bytes) | header (msgpack, header_length bytes) | data area (the sections, back to back)

See specs/format.md. Everything read here is untrusted: lengths are checked
against limits and against the bytes actually present before anything is
allocated, msgpack is parsed with strict bounds and no extension types, and
each section's CRC-32 is checked when it is read.

``parse_header`` validates every field of every record (``records``), the kind-specific
ones included (init record, scheme and its parameters, raw codec), once.
Whatever reads a parsed header (decode, lazy reads, info, verify) can rely on
it and never meets a field of the wrong key set, type or range.
"""

from __future__ import annotations

import math
import struct
import zlib

import msgpack

from ..errors import FormatError, IntegrityError, LimitError, UnsupportedVersionError
from ..init.distparams import MAX_LEVELS
from ..keys import key_mismatch
from . import groups
from .limits import Limits, limits_or_default
from .records import DTYPE_SIZES, check_record, elements, label  # noqa: F401 (DTYPE_SIZES: for readers)

MAGIC = b"\x89PCODEC\n"
FORMAT_NAME = "permcodec"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sHHII")  # magic, version, flags, header_length, header_crc32
PREAMBLE_SIZE = PREAMBLE.size

HEADER_KEYS = {"format", "version", "tensors", "metadata"}
# Containers (arrays and maps) a header may hold per tensor: the record, its shape, init, params,
# a sparse base and its params (or a level pool's values), scheme_params, or with blocks the block map,
# the parts list and two parts with their scheme_params. Beyond this the header cannot be valid; the cap
# stops a header of empty containers from growing ~60x in memory while it is parsed.
CONTAINERS_PER_TENSOR = 12


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
        if len(data) == 0:
            raise FormatError("not a permcodec file: bad magic (the file is empty)")
        if not MAGIC.startswith(bytes(data[:len(MAGIC)])):
            raise FormatError("not a permcodec file: bad magic")
        raise FormatError(f"truncated file: {len(data)} bytes, the preamble alone is {PREAMBLE_SIZE}")
    limits = limits_or_default(limits)
    magic, version, flags, header_length, header_crc = PREAMBLE.unpack(bytes(data[:PREAMBLE_SIZE]))
    if magic != MAGIC:
        hint = foreign_file_hint(bytes(data[:PREAMBLE_SIZE]))
        raise FormatError(f"not a permcodec file: bad magic {magic!r}, expected {MAGIC!r}{hint}")
    if version != FORMAT_VERSION:
        newer = "; a newer permcodec may read it" if version > FORMAT_VERSION else ""
        raise UnsupportedVersionError(f"format version {version} is not supported (this decoder reads "
                                      f"version {FORMAT_VERSION}){newer}")
    if flags != 0:
        raise FormatError(f"preamble flags must be 0, found {flags:#06x}")
    if header_length > limits.max_header_bytes:
        raise LimitError(f"header_length {header_length} exceeds the limit of {limits.max_header_bytes} bytes")
    return header_length, header_crc


def foreign_file_hint(preamble: bytes) -> str:
    """What a file that is not a .pc file seems to be, from its first bytes, and what reads it ('' if unknown)."""
    if preamble.startswith(b"PK\x03\x04"):
        return "; it looks like a torch checkpoint: 'permcodec encode' turns it into one"
    if preamble[8:10] == b'{"':  # a safetensors file: a u64 header length, then its JSON header
        return ("; it looks like a safetensors file: 'permcodec encode' turns one named *.safetensors into a .pc "
                "file if its metadata holds the init spec ('permcodec.init')")
    return ""


def _unique_map(pairs):
    """A dict from msgpack map pairs: string keys, each once (two decoders must never read different values)."""
    result = dict(pairs)
    for key in result:
        if type(key) is not str:  # msgpack gives exact strs, or bytes for a bin key
            raise FormatError(f"header map key {key!r} is not a string")
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
    header = unpack_header(raw, limits)
    found = key_mismatch(header, HEADER_KEYS)
    if found:
        raise FormatError(f"header must be a map with keys {sorted(HEADER_KEYS)}, found {found}")
    if header["format"] != FORMAT_NAME:
        raise FormatError(f"header format must be {FORMAT_NAME!r}, found {header['format']!r}")
    if type(header["version"]) is not int or header["version"] != FORMAT_VERSION:
        raise UnsupportedVersionError(f"header version {header['version']!r} is not supported")
    metadata = header["metadata"]
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("header metadata must be a map of strings to strings")
    check_tensor_list(header["tensors"], limits)
    return header


def unpack_header(raw: bytes, limits: Limits):
    """The msgpack object of the header: strict, no extension types, nothing sized by a claimed count."""
    cap = CONTAINERS_PER_TENSOR * limits.max_tensors + 16
    if len(raw) <= cap:  # each array or map takes a byte at least: the count cannot pass the cap, so is not kept
        hooks = {"object_pairs_hook": _unique_map}
    else:
        budget = _ContainerBudget(cap)
        hooks = {"object_pairs_hook": budget.map, "list_hook": budget.array}
    try:
        # unpackb caps every string and map length at len(raw); arrays are capped lower, at the longest
        # a valid header holds, so that a claimed count never sizes an allocation.
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, ext_hook=_reject_ext, **hooks,
                               max_array_len=min(len(raw), max(limits.max_tensors, limits.max_dims, MAX_LEVELS) + 1))
    except msgpack.ExtraData as err:
        raise FormatError(f"header holds {len(err.extra)} bytes after its map, within header_length") from None
    except (ValueError, msgpack.UnpackException) as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"header is not valid msgpack: {type(err).__name__}: {err}") from None


def check_tensor_list(tensors, limits: Limits) -> None:
    """Every record checked; names unique, sections back to back, group members in places of their own, the
    tensor and total element counts capped."""
    if not isinstance(tensors, list):
        raise FormatError("header tensors must be a list")
    if len(tensors) > limits.max_tensors:
        raise LimitError(f"{len(tensors)} tensors exceed the limit of {limits.max_tensors}")
    names, total, offset, has_groups = set(), 0, 0, False
    for index, record in enumerate(tensors):
        check_record(record, index, limits)
        grouped = record["kind"] == "group"
        has_groups = has_groups or grouped
        for name in record["names"] if grouped else (record["name"],):
            if name in names:
                raise FormatError(f"tensor name {name!r} appears twice")
            names.add(name)
        if record["offset"] != offset:
            raise FormatError(f"{label(record)}: section offset {record['offset']}, expected {offset} "
                              f"(sections are back to back in record order)")
        offset += record["length"]
        total += elements(record)
        if total > limits.max_total_elements:
            raise LimitError(f"total element count exceeds the limit of {limits.max_total_elements}")
    if has_groups:
        if len(names) > limits.max_tensors:
            raise LimitError(f"the groups' members bring the tensors past the limit of {limits.max_tensors}")
        groups.check_positions(tensors, len(names))


def data_size(header: dict) -> int:
    """Bytes of the data area the header describes."""
    return sum(record["length"] for record in header["tensors"])


def check_section(record: dict, section: bytes) -> bytes:
    """The section of ``record`` after its length and CRC-32 check."""
    if len(section) != record["length"]:
        raise FormatError(f"{label(record)}: section truncated ({len(section)} of "
                          f"{record['length']} bytes)")
    if crc32(section) != record["crc32"]:
        raise IntegrityError(f"{label(record)}: section CRC-32 mismatch (stored {record['crc32']:#010x},"
                             f" computed {crc32(section):#010x})")
    return section
