"""Checks of one tensor record of the header (specs/format.md Section 6), every kind-specific key included.

Run once, by ``container.parse_header``; whatever reads a parsed header can
rely on every field having its key set, type and range.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..errors import FormatError, LimitError, SpecError
from ..init import distparams
from ..init.philox import RNG_NAME, check_seed, check_stream
from ..keys import key_mismatch
from ..rows import BlockLayout, row_shape
from .limits import Limits
from .schemes import INDEX_SCHEMES, RAW_CODECS

DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4,
               "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
KINDS = ("permuted", "raw")  # a tensor's kind; a group record (format rev 1.7) holds raw tensors
COMMON_RECORD_KEYS = {"name", "kind", "dtype", "shape", "offset", "length", "crc32", "sha256"}
RECORD_KEYS = {"permuted": COMMON_RECORD_KEYS | {"init", "scheme", "scheme_params"},
               "raw": COMMON_RECORD_KEYS | {"codec"}}
# A permuted record with block-local permutations (format rev 1.4): the layout, and one coded part per run
# of equal blocks in place of scheme and scheme_params.
BLOCK_RECORD_KEYS = COMMON_RECORD_KEYS | {"init", "block", "parts"}
PART_KEYS = {"scheme", "scheme_params", "length"}
# A group record (format rev 1.7): raw tensors of one dtype in one section, each keeping its place in the file's
# tensor order through ``positions``.
SECTION_KEYS = {"offset", "length", "crc32", "sha256"}
GROUP_KEYS = SECTION_KEYS | {"kind", "dtype", "codec", "names", "shapes", "positions"}
INIT_KEYS = {"rng", "seed", "stream", "dist", "params"}


def extent(shape) -> int:
    """Elements of a shape with every zero dimension counted as 1.

    Capping this, not just the element count, keeps an empty tensor such as
    [0, 2^20, 2^20] from implying 2^40-long rows that a decoder would allocate for.
    """
    return math.prod(shape) if 0 not in shape else math.prod(max(size, 1) for size in shape)


UINT64_END, UINT32_END = 2**64, 2**32


def _is_uint(value, end: int = UINT64_END) -> bool:
    return type(value) is int and 0 <= value < end  # msgpack gives exact ints; bool is not one


def is_group(record: dict) -> bool:
    """Whether a record is a group record (format rev 1.7), which holds raw tensors instead of being one."""
    return record["kind"] == "group"


def label(record: dict) -> str:
    """How a message names a checked record: 'tensor NAME', or a group by its size and first member."""
    if is_group(record):
        return f"group of {len(record['names'])} raw tensors from {record['names'][0]!r}"
    return f"tensor {record['name']!r}"


def elements(record: dict) -> int:
    """The elements of a checked record's tensor, or of all its members for a group."""
    return math.prod(record["shape"]) if record["kind"] != "group" else sum(map(math.prod, record["shapes"]))


def check_record(record, index: int, limits: Limits) -> None:
    """Every field of one record; permuted records get their ``init`` map normalized (float params as floats)."""
    if not isinstance(record, dict) or not COMMON_RECORD_KEYS <= record.keys() or record["kind"] == "group":
        if isinstance(record, dict) and record.get("kind") == "group":
            check_group_record(record, index, limits)
            return
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise FormatError(f"tensor record {index} must be a map with keys {sorted(COMMON_RECORD_KEYS)}, "
                          f"found {found}")
    name = record["name"]
    if not isinstance(name, str) or not name:
        raise FormatError(f"tensor record {index}: name must be a non-empty string, found {name!r}")
    where = f"tensor {name!r}"
    check_common_fields(record, where, limits)
    expected = BLOCK_RECORD_KEYS if record["kind"] == "permuted" and "block" in record else RECORD_KEYS[record["kind"]]
    found = key_mismatch(record, expected)
    if found:
        raise FormatError(f"{where}: a {record['kind']} record must have keys {sorted(expected)}, found {found}")
    if record["kind"] == "raw":
        check_raw_fields(record, where)
    else:
        check_permuted_fields(record, where)


def check_common_fields(record: dict, where: str, limits: Limits) -> None:
    """kind, dtype, shape (within the limits), offset, length, crc32, sha256."""
    if not isinstance(record["kind"], str) or record["kind"] not in KINDS:
        raise FormatError(f"{where}: kind must be one of {', '.join(KINDS)}, found {record['kind']!r}")
    check_dtype(record["dtype"], where)
    check_shape(record["shape"], where, limits)
    check_section_fields(record, where)


def check_dtype(dtype, where: str) -> None:
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise FormatError(f"{where}: unknown dtype {dtype!r}")


def check_section_fields(record: dict, where: str) -> None:
    """offset, length, crc32 and sha256: where a record's section lies and what it holds."""
    if not (_is_uint(record["offset"]) and _is_uint(record["length"])):
        key = "length" if _is_uint(record["offset"]) else "offset"
        raise FormatError(f"{where}: {key} must be a non-negative 64-bit integer, found {record[key]!r}")
    if not _is_uint(record["crc32"], UINT32_END):
        raise FormatError(f"{where}: crc32 must be a 32-bit unsigned integer, found {record['crc32']!r}")
    if not isinstance(record["sha256"], bytes) or len(record["sha256"]) != 32:
        raise FormatError(f"{where}: sha256 must be 32 bytes")


def check_shape(shape, where: str, limits: Limits) -> None:
    # a loop, not all() over a generator: this runs for every record of a header (ResNet-50: 349)
    if not isinstance(shape, list):
        raise FormatError(f"{where}: shape must be a list of non-negative integers, found {shape!r}")
    for size in shape:
        if not _is_uint(size):
            raise FormatError(f"{where}: shape must be a list of non-negative integers, found {shape!r}")
    if len(shape) > limits.max_dims:
        raise LimitError(f"{where}: {len(shape)} dimensions exceed the limit of {limits.max_dims}")
    if shape and max(shape) > limits.max_dim:
        raise LimitError(f"{where}: dimension {max(shape)} exceeds the limit of {limits.max_dim}")
    if extent(shape) > limits.max_tensor_elements:
        raise LimitError(f"{where}: {extent(shape)} elements exceed the limit of {limits.max_tensor_elements}"
                         + (" (a zero dimension counts as 1)" if 0 in shape else ""))


def check_raw_fields(record: dict, where: str) -> None:
    if not isinstance(record["codec"], str) or record["codec"] not in RAW_CODECS:
        raise FormatError(f"{where}: unknown raw codec {record['codec']!r} (expected "
                          f"{' or '.join(map(repr, RAW_CODECS))})")


def check_group_record(record: dict, index: int, limits: Limits) -> None:
    """A group record: its key set; names, shapes and positions, one entry of each per member; the dtype, codec
    and section fields; the group's elements within the per-tensor cap, as it decodes as one array."""
    found = key_mismatch(record, GROUP_KEYS)
    if found:
        raise FormatError(f"tensor record {index}: a group record must have keys {sorted(GROUP_KEYS)}, "
                          f"found {found}")
    names, shapes, positions = record["names"], record["shapes"], record["positions"]
    if not (isinstance(names, list) and isinstance(shapes, list) and isinstance(positions, list)) or not names \
            or not len(names) == len(shapes) == len(positions):
        raise FormatError(f"tensor record {index}: a group's names, shapes and positions must be lists of one "
                          f"entry per member, at least one, found {_summary(names)}, {_summary(shapes)} and "
                          f"{_summary(positions)}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise FormatError(f"tensor record {index}: a group's names must be non-empty strings, found {name!r}")
    where = label(record)
    check_dtype(record["dtype"], where)
    check_raw_fields(record, where)
    check_section_fields(record, where)
    for name, shape, position in zip(names, shapes, positions):
        check_shape(shape, f"tensor {name!r}", limits)
        if not _is_uint(position):
            raise FormatError(f"tensor {name!r}: position must be a non-negative integer, found {position!r}")
    if elements(record) > limits.max_tensor_elements:
        raise LimitError(f"{where}: {elements(record)} elements exceed the limit of {limits.max_tensor_elements} "
                         f"(a group decodes as one array)")


def check_permuted_fields(record: dict, where: str) -> None:
    if record["dtype"] != "float32":
        raise FormatError(f"{where}: permuted tensors are float32, found {record['dtype']!r}")
    if not record["shape"]:
        raise FormatError(f"{where}: a permuted tensor needs at least one dimension")
    if "block" in record:
        check_block_fields(record, where)
    else:
        rows, n = row_shape(record["shape"])
        check_scheme_params(record["scheme"], record["scheme_params"], rows, n, where)
    record["init"] = checked_init(record["init"], where)


def block_layout(record: dict, where: str) -> BlockLayout:
    try:
        return BlockLayout.from_dict(record["block"], where)
    except SpecError as err:
        raise FormatError(str(err)) from None


def check_block_fields(record: dict, where: str) -> None:
    """block is a known layout and size; parts has one map per run of equal blocks, each a valid scheme,
    its parameters and a length, the lengths adding up to the section's."""
    rows, n = row_shape(record["shape"])
    groups = block_layout(record, where).groups(n)
    parts = record["parts"]
    if not isinstance(parts, list) or len(parts) != len(groups):
        raise FormatError(f"{where}: parts must be a list of {len(groups)} map(s), one per run of equal blocks "
                          f"{list(groups)}, found {_summary(parts)}")
    total = 0
    for index, (part, (count, size)) in enumerate(zip(parts, groups)):
        at = f"{where} part {index}"
        found = key_mismatch(part, PART_KEYS)
        if found:
            raise FormatError(f"{at}: must be a map with keys {sorted(PART_KEYS)}, found {found}")
        check_scheme_params(part["scheme"], part["scheme_params"], rows * count, size, at)
        if not _is_uint(part["length"]):
            raise FormatError(f"{at}: length must be a non-negative 64-bit integer, found {part['length']!r}")
        total += part["length"]
    if total != record["length"]:
        raise FormatError(f"{where}: part lengths add up to {total} bytes, the section holds {record['length']}")


def _summary(value) -> str:
    return f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__


class Part(NamedTuple):
    """One coded matrix of a permuted section: its scheme, parameters, shape, and byte range in the section."""

    scheme: str
    params: dict
    rows: int
    n: int
    start: int
    end: int


def record_parts(record: dict) -> list[Part]:
    """The coded parts of a checked permuted record: one, the whole rows, unless it has blocks."""
    rows, n = row_shape(record["shape"])
    if "block" not in record:
        return [Part(record["scheme"], record["scheme_params"], rows, n, 0, record["length"])]
    groups = BlockLayout.from_dict(record["block"]).groups(n)
    parts, start = [], 0
    for part, (count, size) in zip(record["parts"], groups):
        parts.append(Part(part["scheme"], part["scheme_params"], rows * count, size, start, start + part["length"]))
        start += part["length"]
    return parts


def schemes_of(record: dict) -> str:
    """The scheme id(s) of a permuted record, '+'-joined where its parts differ."""
    return "+".join(dict.fromkeys(part.scheme for part in record_parts(record)))


def checked_init(init, where: str) -> dict:
    """A permuted record's ``init`` map with every field checked (specs/rng.md §7); float params as floats."""
    found = key_mismatch(init, INIT_KEYS)
    if found:
        raise FormatError(f"{where}: init must be a map with keys {sorted(INIT_KEYS)}, found {found}")
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
    """A permuted record's ``scheme`` is a known index scheme, and its ``scheme_params`` are valid for it."""
    if not isinstance(scheme, str) or scheme not in INDEX_SCHEMES:
        raise FormatError(f"{where}: unknown index scheme {scheme!r}; known: {', '.join(INDEX_SCHEMES)}")
    INDEX_SCHEMES[scheme].check_params(params, rows, n, where)
