"""Group records (specs/format.md Section 6.4, format rev 1.7): many small raw tensors of one dtype in one section.

A ResNet's BatchNorm statistics and biases are a few dozen elements each, and
as records of their own their header fields (name, SHA-256, CRC, offsets) took
3.5 times the bytes of their data and most of the decode's Python. A group
stores them as one tensor, its members' bytes back to back; each member keeps
its place in the file's tensor order through ``positions``.

Here: the tensor order of a checked header (``tensor_records``, with a record
made for each member), its check (``check_positions``), and which raw tensors
the reference encoder groups (``plan_groups``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..errors import FormatError
from .records import is_group

# The reference encoder's rule (informative, Section 6.4): raw tensors of at most MEMBER_MAX elements, grouped by
# dtype in groups of at most MAX_ELEMENTS elements and at least MIN_MEMBERS tensors (a tensor left alone keeps a
# raw record, whose header entry is the smaller).
MEMBER_MAX = 1 << 12
MIN_MEMBERS = 2
MAX_ELEMENTS = 1 << 16


def check_positions(tensors: list[dict], count: int) -> None:
    """Every group member's position lies among the file's ``count`` tensors, and no two members share one."""
    taken: set[int] = set()
    for record in tensors:
        if not is_group(record):
            continue
        for name, position in zip(record["names"], record["positions"]):
            if position >= count:
                raise FormatError(f"tensor {name!r}: position {position} is past the file's {count} tensors")
            if position in taken:
                raise FormatError(f"tensor {name!r}: position {position} is another member's")
            taken.add(position)


def member_records(group: dict, index: int) -> list[dict]:
    """The record of each member of group record ``index``: a raw tensor's name, kind, dtype, shape and codec,
    with ``group`` (the group record's index in the header's tensors) and ``start`` (its first element's index
    in the group's elements)."""
    members, start = [], 0
    for name, shape in zip(group["names"], group["shapes"]):
        members.append({"name": name, "kind": "raw", "dtype": group["dtype"], "shape": shape,
                        "codec": group["codec"], "group": index, "start": start})
        start += math.prod(shape)
    return members


def tensor_records(tensors: list[dict]) -> list[dict]:
    """The record of every tensor of a checked header, in the file's tensor order: each group member at its
    position, the permuted and raw records in the slots left, in header order."""
    if not any(is_group(record) for record in tensors):
        return list(tensors)
    plain = [record for record in tensors if not is_group(record)]
    placed = [(position, member) for index, record in enumerate(tensors) if is_group(record)
              for member, position in zip(member_records(record, index), record["positions"])]
    slots: list[dict | None] = [None] * (len(plain) + len(placed))
    for position, member in placed:
        slots[position] = member
    records = iter(plain)
    return [slot if slot is not None else next(records) for slot in slots]


def plan_groups(raw: Iterable[tuple[str, str, int]]) -> list[list[str]]:
    """The groups the reference encoder writes, each a list of names in file order, from the file's raw tensors
    as (name, dtype, elements) in file order."""
    small: dict[str, list[tuple[str, int]]] = {}
    for name, dtype, elements in raw:
        if elements <= MEMBER_MAX:
            small.setdefault(dtype, []).append((name, elements))
    chunks = []
    for members in small.values():
        chunk, size = [], 0
        for name, elements in members:
            if chunk and size + elements > MAX_ELEMENTS:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(name)
            size += elements
        chunks.append(chunk)
    return [chunk for chunk in chunks if len(chunk) >= MIN_MEMBERS]

