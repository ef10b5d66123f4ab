"""Decoding: a .pc file's records and sections back to tensors, bit-exactly, on any device.

``PCFile`` reads the header up front (``format.container`` checks all of it)
and each tensor's section only when asked; every method may be called from
several threads at once. On the CPU the pools are rebuilt with numpy
(``permcodec.arrays``), so ``get_array`` and the CLI's .safetensors output
never import torch; another device rebuilds them with torch, in place.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from . import arrays, perm, small_tensors
from .bits import NUMPY_DTYPES, array_from_bytes, sha256_of
from .devices import checked_device
from .errors import FormatError, IntegrityError, PermcodecError, SpecError
from .format import container, groups, records, schemes
from .format.container import Limits
from .init.initspec import InitSpec, TensorInit
from .raw_decoding import (decode_group, decode_raw, decode_small_raw, member_array, member_error, member_tensor,
                           memory_errors_named, raw_tensor, small_raw)
from .rows import BlockLayout

if TYPE_CHECKING:
    import torch


def tensor_init(record: dict) -> TensorInit:
    """The TensorInit of a permuted record (whose fields ``container.parse_header`` has checked)."""
    init = record["init"]
    fields = {key: init[key] for key in ("seed", "stream", "dist", "params")}
    if "block" in record:
        fields["block"] = record["block"]
    try:
        return TensorInit.from_dict({"name": record["name"], "shape": record["shape"], **fields})
    except SpecError as err:
        raise FormatError(f"bad init record: {err}") from None


def checked_tensor_init(record: dict) -> TensorInit:
    """``tensor_init`` of a record of an open file, without checking its fields again: the checks at open
    (``records.check_permuted_fields``) cover every check of ``TensorInit.from_dict``, which cost ResNet-50's
    decode ~0.7 ms for its 52 records."""
    init = record["init"]
    block = BlockLayout.from_dict(record["block"]) if "block" in record else None
    return TensorInit(record["name"], tuple(record["shape"]), init["seed"], init["stream"], init["dist"],
                      init["params"], block)


def engine_for(device):
    """The ``arrays`` namespace that rebuilds tensors for ``device``: numpy on the CPU, else torch there."""
    return arrays.NUMPY if str(device) == "cpu" else arrays.TorchArrays(device)


def decode_permuted(record: dict, section: bytes, xp, init: TensorInit | None = None):
    """The float32 values of a permuted record, an array of the ``arrays`` namespace ``xp`` (``init``: the
    record's ``tensor_init``, if the caller keeps it)."""
    what = f"tensor {record['name']!r}"
    rows, n = perm.row_shape(record["shape"])
    parts = records.record_parts(record)
    for part in parts:
        schemes.INDEX_SCHEMES[part.scheme].check_layout(part.params, part.rows, part.n,
                                                        section[part.start:part.end], what)
    if rows * n == 0:  # nothing to regenerate: the section's own bytes were all there was to check
        return xp.empty(tuple(record["shape"]), xp.float32)
    init = init or tensor_init(record)
    view = perm.BlockView.of(init, xp)
    initial = view.split(init.regenerate(xp).reshape(rows, n))
    decoded = [schemes.INDEX_SCHEMES[part.scheme].decode(part.params, part_initial, section[part.start:part.end], what)
               for part, part_initial in zip(parts, initial)]
    return view.join(decoded).reshape(init.shape)


# A callback this thread runs once a tensor's values are rebuilt, before they are hashed (``scheduler`` waits for
# it), or none. Thread-local, so that ``get_tensor`` keeps its one argument.
after_rebuild = threading.local()


def decode_checked(record: dict, section: bytes, xp, verify: bool, init: TensorInit | None = None):
    """A permuted record's values (an ``xp`` array) or a raw record's element bytes, once the section's CRC-32
    and, if ``verify``, the SHA-256 of the result have been checked."""
    container.check_section(record, section)
    permuted = record["kind"] == "permuted"
    with memory_errors_named(record):
        decoded = decode_permuted(record, section, xp, init) if permuted else decode_raw(record, section)
        if getattr(after_rebuild, "callback", None) is not None:
            after_rebuild.callback()
        if not verify:
            digest = None
        else:
            digest = sha256_of(decoded) if permuted else hashlib.sha256(decoded).digest()
    if verify and digest != record["sha256"]:
        raise IntegrityError(f"tensor {record['name']!r}: decoded bits do not match the stored SHA-256")
    return decoded


def decode_record(record: dict, section: bytes, device, verify: bool,
                  init: TensorInit | None = None) -> "torch.Tensor":
    """One record's tensor on ``device`` (a torch tensor; on the CPU it shares the numpy result's memory)."""
    import torch

    xp = engine_for(device)
    on_cpu = xp is arrays.NUMPY
    decoded = decode_checked(record, section, xp, verify, init)
    if record["kind"] == "permuted":
        return torch.from_numpy(decoded) if on_cpu else decoded
    return raw_tensor(record, decoded, device)


def decode_record_array(record: dict, section: bytes, verify: bool, init: TensorInit | None = None) -> np.ndarray:
    """One record's tensor as a numpy array, rebuilt without torch (a SpecError for bfloat16, which numpy lacks)."""
    decoded = decode_checked(record, section, arrays.NUMPY, verify, init)
    if record["kind"] == "raw":
        return array_from_bytes(decoded, record["dtype"], record["shape"], f"tensor {record['name']!r}")
    return decoded


# ---------------------------------------------------------------- reading a file

def positional_reader(source) -> tuple[int, Callable[[int, int], bytes]]:
    """(size, read_at) of a bytes-like object or a seekable binary stream.

    ``read_at(offset, length)`` keeps no position between calls, so any number
    of threads may read one file at once: a slice of in-memory bytes, ``os.pread``
    on a real file, and a lock around seek-and-read for any other stream.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        return len(view), lambda offset, length: bytes(view[offset:offset + length])
    try:
        fd = source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if fd is not None and hasattr(os, "pread"):
        return os.fstat(fd).st_size, lambda offset, length: _pread_exactly(fd, offset, length)
    lock = threading.Lock()

    def read_at(offset: int, length: int) -> bytes:
        with lock:
            source.seek(offset)
            return source.read(length)

    with lock:
        return source.seek(0, io.SEEK_END), read_at


def _pread_exactly(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    chunks = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def read_header(file_size: int, read_at, limits: Limits | None) -> tuple[dict, int]:
    """Parse preamble and header through ``read_at(offset, length)``; check the file's exact length."""
    header_length, header_crc = container.parse_preamble(read_at(0, container.PREAMBLE_SIZE), limits)
    data_start = container.PREAMBLE_SIZE + header_length
    if data_start > file_size:
        raise FormatError(f"truncated file: header_length {header_length} runs past the end of the "
                          f"{file_size}-byte file")
    header = container.parse_header(read_at(container.PREAMBLE_SIZE, header_length), header_crc, limits)
    expected = data_start + container.data_size(header)
    if file_size < expected:
        raise FormatError(f"truncated file: {file_size} bytes, the header describes {expected}")
    if file_size > expected:
        raise FormatError(f"{file_size - expected} unexpected bytes after the last section")
    return header, data_start


class PCFile:
    """Lazy access to a .pc file, the safetensors ``safe_open`` way: only the header is read up front.

    ``source`` is a bytes-like object or a seekable binary stream. Every method
    may be called from several threads at once.
    """

    def __init__(self, source, device="cpu", verify: bool = True, limits: Limits | None = None,
                 owns_stream: bool = False):
        self._stream = source
        self._owns_stream = owns_stream
        self._device = "cpu" if isinstance(device, str) and device == "cpu" else checked_device(device)
        self.verify = verify
        size, self._read_at = positional_reader(source)
        self.header, self._data_start = read_header(size, self._read_at, limits)
        self._records = {record["name"]: record for record in groups.tensor_records(self.header["tensors"])}
        self._inits: dict[str, TensorInit] = {}  # tensor_init of each permuted record, once it was decoded
        self._last_group: tuple[int, bytearray] | None = None  # see _shared_group_bytes
        self._last_group_lock = threading.Lock()

    @property
    def device(self) -> "torch.device":
        """The torch device ``get_tensor`` rebuilds on."""
        return checked_device(self._device)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Close the file, if this object opened it."""
        if self._owns_stream:
            self._stream.close()

    def keys(self) -> list[str]:
        """The tensor names, in file order (the order they were encoded in, group members included)."""
        return list(self._records)

    def metadata(self) -> dict[str, str]:
        """The file's metadata map (strings to strings), e.g. the training config and metrics."""
        return dict(self.header["metadata"])

    def record(self, name: str) -> dict:
        """The header record of tensor ``name`` (checked at open), as a dict: see specs/format.md Section 6. A
        member of a group record (Section 6.4) has one made at open: ``kind`` "raw", its ``name``, ``dtype``,
        ``shape`` and ``codec``, ``group`` (the index of its group record in ``header["tensors"]``) and
        ``start`` (the index of its first element among the group's)."""
        try:
            return self._records[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in this file") from None

    def read_section(self, name: str) -> bytes:
        """The raw section bytes of tensor ``name``, or of its group for a group member (not yet checked:
        ``get_tensor`` checks them)."""
        record = self._section_record(name)
        return self._read_at(self._data_start + record["offset"], record["length"])

    def _section_record(self, name: str) -> dict:
        """The header record whose section holds tensor ``name``: its own, or its group's."""
        record = self.record(name)
        return self.header["tensors"][record["group"]] if "group" in record else record

    def get_tensor(self, name: str) -> "torch.Tensor":
        """The tensor ``name``, rebuilt bit-exactly on this file's device (its hash checked if ``verify``; a
        group member's by decoding its whole group)."""
        record = self.record(name)
        if "group" in record:
            return member_tensor(record, self._shared_group_bytes(name), self._device)
        return decode_record(record, self._section(name), self._device, self.verify, self._tensor_init(name))

    def get_array(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a numpy array, rebuilt on the CPU without importing torch (its hash checked if
        ``verify``). A bfloat16 tensor raises SpecError: numpy has no such dtype; use ``get_tensor``."""
        record = self.record(name)
        if "group" in record:
            return member_array(record, self._shared_group_bytes(name))
        return decode_record_array(record, self._section(name), self.verify, self._tensor_init(name))

    def _group_bytes(self, name: str) -> bytearray:
        """The element bytes of the group that holds tensor ``name`` (``decode_group``), in a buffer of their own."""
        group = self._section_record(name)
        with memory_errors_named(group):
            section = self.read_section(name)
        return decode_group(group, section, self.verify)

    def _shared_group_bytes(self, name: str) -> bytearray:
        """``_group_bytes``, kept for the next call where the group holds at most SHARED_GROUP_BYTES: reading a
        group's members one by one (``get_tensor`` of each name, the safetensors way) then decodes the group
        once, not once per member. Callers copy out what they return and never write the buffer."""
        index = self.record(name)["group"]
        with self._last_group_lock:
            if self._last_group is not None and self._last_group[0] == index:
                return self._last_group[1]
        try:
            data = self._group_bytes(name)
        except PermcodecError as error:
            raise member_error(error, name)  # its cause: the group's error
        if len(data) <= SHARED_GROUP_BYTES:
            with self._last_group_lock:
                self._last_group = (index, data)
        return data

    def _section(self, name: str) -> bytes:
        """``read_section``, with running out of memory for its copy named as the tensor's (MemoryLimitError)."""
        with memory_errors_named(self.record(name)):
            return self.read_section(name)

    def _batchable(self, name: str) -> bool:
        """Whether ``_start_batch`` can take tensor ``name``: on the CPU, of the kind ``small_tensors`` takes."""
        record = self.record(name)  # kind first: most records of a file of many small tensors are raw
        return record["kind"] == "permuted" and engine_for(self._device) is arrays.NUMPY and \
            small_tensors.batchable(record, self._tensor_init(name))

    def _start_batch(self, names: list[str], pool_share: float) -> "small_tensors.Batch | None":
        """``batchable`` tensors ``names`` decoding in two compiled calls, about ``pool_share`` of their values on
        the shared pool (``small_tensors``; the caller decodes the rest in ``decode_rest`` or ``finish``), or None
        where their sections cannot be read or there is not the memory for them at once; its ``finish`` gives
        their numpy arrays, None for each that failed a check, for ``get_tensor`` or ``get_array`` to raise its
        error."""
        try:
            items = [(self.record(name), self.read_section(name), self._tensor_init(name)) for name in names]
            return small_tensors.Batch(items, self.verify).start(pool_share)
        except Exception:  # then each tensor alone, whose error names it, in file order: a section that cannot be
            return None    # read, no memory, no thread to be had (a thread limit, or the interpreter shutting down)

    def _small_raw(self, name: str) -> bool:
        """Whether ``decode_small_raw`` can take tensor ``name``: a ``small_raw`` record, rebuilt on the CPU."""
        return small_raw(self.record(name)) and engine_for(self._device) is arrays.NUMPY

    def _decode_small_raw(self, names: list[str]) -> list[np.ndarray | None]:
        """The numpy arrays of ``small_raw`` tensors ``names`` (see ``decode_small_raw``); all None where their
        sections cannot be read, for ``get_tensor`` to raise the first error in file order."""
        try:
            items = [(self.record(name), self.read_section(name)) for name in names]
        except (OSError, MemoryError):
            return [None] * len(names)
        return decode_small_raw(items, self.verify)

    def _tensor_init(self, name: str) -> TensorInit | None:
        """The ``tensor_init`` of a permuted record, built once per file (threads may race to build it alike)."""
        record = self.record(name)
        if record["kind"] != "permuted":
            return None
        if name not in self._inits:
            self._inits[name] = checked_tensor_init(record)
        return self._inits[name]

    def numpy_holds_all(self) -> bool:
        """Whether ``get_array`` can give every tensor: all have a numpy dtype (all but bfloat16)."""
        return all(record["dtype"] in NUMPY_DTYPES for record in self._records.values())

    def init_spec(self) -> InitSpec:
        """The InitSpec of the file's permuted tensors, in file order: what ``save`` needs to encode them again."""
        return InitSpec(tensor_init(record) for record in self.header["tensors"] if record["kind"] == "permuted")


# The most bytes of a decoded group a PCFile keeps for the next member read (the reference encoder's groups hold
# at most 65,536 elements, 512 KiB of float64).
SHARED_GROUP_BYTES = 1 << 22


def safe_open(path, device="cpu", verify: bool = True, limits: Limits | None = None) -> PCFile:
    """Open a .pc file for lazy per-tensor reads; use as a context manager."""
    stream = open(path, "rb")
    try:
        return PCFile(stream, device, verify, limits, owns_stream=True)
    except BaseException:
        stream.close()
        raise
