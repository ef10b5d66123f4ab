"""Raw tensors and group records from their decoded bytes: the raw codec's step, the small raw tensors of files
before group records (``decode_small_raw``), a group's members, and out-of-memory errors named by tensor.

Shared by ``decoder`` (one tensor at a time), ``scheduler`` (``decode_all``'s jobs) and ``inspection``; no torch
at import.
"""

from __future__ import annotations

import hashlib
import math
import sys
from typing import TYPE_CHECKING

import numpy as np

from .bits import NUMPY_DTYPES, array_from_bytes, tensor_from_bytes
from .errors import FormatError, IntegrityError, MemoryLimitError, PermcodecError, is_out_of_memory
from .format import container, records, schemes

if TYPE_CHECKING:
    import torch


class memory_errors_named:  # noqa: N801 - used as a context manager, like contextlib.suppress
    """Turn running out of memory on a tensor the file declares into a MemoryLimitError naming it; any other
    error passes as it came, its cause kept. A class, not a contextlib generator: it wraps every tensor's
    decoding, and entering a generator-based one cost several microseconds a tensor."""

    def __init__(self, record: dict):
        self.record = record

    def __enter__(self):
        return self

    def __exit__(self, kind, err, traceback) -> bool:
        if isinstance(err, (MemoryError, RuntimeError)) and not isinstance(err, MemoryLimitError) \
                and is_out_of_memory(err):
            detail = str(err).splitlines()[0] if str(err) else "no details"
            raise MemoryLimitError(f"{records.label(self.record)}: not enough memory for its "
                                   f"{records.elements(self.record):,} elements ({type(err).__name__}: "
                                   f"{detail})") from None
        return False


def decode_raw(record: dict, section: bytes) -> bytearray:
    """The element bytes (little-endian, C order) of a raw record, in a bytearray of their own."""
    return raw_elements(record["codec"], section, record["dtype"], math.prod(record["shape"]),
                        f"tensor {record['name']!r}")


def raw_elements(codec_id: str, section: bytes, dtype: str, count: int, what: str) -> bytearray:
    """The ``count`` elements of ``dtype`` a raw codec's section holds, as bytes (a raw record's, or a group's
    members' back to back), once each is checked to be a valid value of ``dtype``."""
    data = schemes.RAW_CODECS[codec_id].decode(section, container.DTYPE_SIZES[dtype], count, what)
    if not valid_elements(dtype, data):
        raise FormatError(f"{what}: bool tensor holds bytes other than 0 and 1")
    return data


def valid_elements(dtype: str, data) -> bool:
    """Whether the element bytes ``data`` (any buffer) hold only valid values of ``dtype``: 0 or 1 each for a
    bool. Read in place: a large bool tensor is not copied."""
    return dtype != "bool" or int(np.frombuffer(data, dtype=np.uint8).max(initial=0)) <= 1


# A raw tensor of at most this many elements is nearly all Python to decode (a BatchNorm's statistics, a bias):
# decode_all takes such tensors in one plain loop, ``decode_small_raw``.
SMALL_RAW_MAX = 1 << 12


def small_raw(record: dict) -> bool:
    """Whether ``decode_small_raw`` takes this record: a small raw tensor of its own section (not a group
    member) that numpy holds in host order."""
    return record["kind"] == "raw" and "group" not in record and record["dtype"] in NUMPY_DTYPES \
        and sys.byteorder == "little" and math.prod(record["shape"]) <= SMALL_RAW_MAX


def decode_small_raw(items: list[tuple[dict, bytes]], verify: bool) -> list[np.ndarray | None]:
    """The numpy array of each ``(record, section)`` of ``small_raw`` records, as ``decode_checked`` and
    ``array_from_bytes`` give it, without their layers and with the sections of each raw codec decoded together
    (its ``decode_many``); None for each that fails a check, which the one-tensor path raises. The arrays are
    views of shared buffers, without overlap."""
    decoded: list[np.ndarray | None] = [None] * len(items)
    by_codec: dict[str, list[int]] = {}
    for index, (record, section) in enumerate(items):
        try:
            container.check_section(record, section)
        except (PermcodecError, MemoryError):  # the one-tensor path raises it, naming the tensor
            continue
        by_codec.setdefault(record["codec"], []).append(index)
    for codec_id, members in by_codec.items():
        try:
            element_bytes = schemes.RAW_CODECS[codec_id].decode_many([
                (section, container.DTYPE_SIZES[record["dtype"]], math.prod(record["shape"]),
                 f"tensor {record['name']!r}") for record, section in (items[index] for index in members)])
        except MemoryError:
            continue
        for index, data in zip(members, element_bytes):
            record = items[index][0]
            try:
                if data is not None and valid_elements(record["dtype"], data) and \
                        (not verify or hashlib.sha256(data).digest() == record["sha256"]):
                    decoded[index] = data.view(NUMPY_DTYPES[record["dtype"]]).reshape(record["shape"])
            except MemoryError:  # the one-tensor path raises it, naming the tensor
                pass
    return decoded


def decode_group(group: dict, section: bytes, verify: bool) -> bytearray:
    """A group record's element bytes, every member's back to back (specs/format.md Section 6.4), once the
    section's CRC-32 and, if ``verify``, their SHA-256 have been checked."""
    container.check_section(group, section)
    what = records.label(group)
    with memory_errors_named(group):
        data = raw_elements(group["codec"], section, group["dtype"], records.elements(group), what)
        if verify and hashlib.sha256(data).digest() != group["sha256"]:
            raise IntegrityError(f"{what}: decoded bits do not match the stored SHA-256")
    return data


def member_error(error: Exception, name: str) -> Exception:
    """``error``, raised by decoding a group, as raised for its member ``name``: a permcodec error of the same class
    whose message names the member first; any other error as it came."""
    if not isinstance(error, PermcodecError):
        return error
    try:
        named = type(error)(f"tensor {name!r}, in the {error}")
    except TypeError:  # a class whose constructor takes more than a message
        return error
    named.__cause__ = error  # the group's own error, with its traceback, on every path that names a member
    return named


def member_arrays(members: list[dict], data: bytearray) -> list[np.ndarray]:
    """The numpy arrays of members of one group, views of their elements in ``data``, the group's bytes
    (``decode_group``), for a caller that hands out all of them at once; a SpecError for bfloat16, which numpy
    lacks."""
    dtype = members[0]["dtype"]
    if dtype not in NUMPY_DTYPES:
        array_from_bytes(b"", dtype, (0,), f"tensor {members[0]['name']!r}")  # raises its SpecError
    flat = np.frombuffer(data, NUMPY_DTYPES[dtype]) if data else np.empty(0, NUMPY_DTYPES[dtype])
    return [flat[member["start"]:member["start"] + math.prod(member["shape"])].reshape(member["shape"])
            for member in members]


def member_bytes(member: dict, data: bytearray) -> bytearray:
    """A group member's element bytes, copied out of ``data``, its group's bytes: what it returns holds no more
    memory than the member's own."""
    itemsize = container.DTYPE_SIZES[member["dtype"]]
    start = member["start"] * itemsize
    return data[start:start + math.prod(member["shape"]) * itemsize]


def member_array(member: dict, data: bytearray) -> np.ndarray:
    """A group member's numpy array, in memory of its own, from its group's bytes ``data``."""
    return array_from_bytes(member_bytes(member, data), member["dtype"], member["shape"],
                            f"tensor {member['name']!r}")


def member_tensor(member: dict, data: bytearray, device) -> "torch.Tensor":
    """A group member's tensor on ``device``, in memory of its own, from its group's bytes ``data``."""
    return raw_tensor(member, member_bytes(member, data), device)


def raw_tensor(record: dict, data: bytearray, device) -> "torch.Tensor":
    """A raw record's (or group member's) tensor on ``device`` from its element bytes ``data``, which it may
    keep (on the CPU it shares them where numpy holds the dtype)."""
    import torch

    if str(device) == "cpu" and record["dtype"] in NUMPY_DTYPES and sys.byteorder == "little":
        # numpy builds a small array in a third of torch's time; torch takes only native byte order from it
        return torch.from_numpy(array_from_bytes(data, record["dtype"], record["shape"], record["name"]))
    from .dtypes import TORCH_DTYPES

    return tensor_from_bytes(data, TORCH_DTYPES[record["dtype"]], record["shape"]).to(device)
