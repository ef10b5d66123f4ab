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
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import arrays, backend, parallel, perm, small_tensors
from .bits import NUMPY_DTYPES, array_from_bytes, sha256_of
from .devices import checked_device
from .errors import FormatError, IntegrityError, SpecError
from .format import container, groups, records, schemes
from .format.container import Limits
from .init.initspec import InitSpec, TensorInit
from .progress import progress as progress_lines
from .raw_decoding import (SMALL_RAW_MAX, decode_group, decode_raw, decode_small_raw,  # noqa: F401 (SMALL_RAW_MAX:
                           member_array, member_arrays, member_tensor, memory_errors_named,  # what small_raw takes)
                           raw_tensor, small_raw)
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


# A callback this thread runs once a tensor's values are rebuilt, before they are hashed (``_take_in_parallel``
# waits for it), or none. Thread-local, so that ``get_tensor`` keeps its one argument.
_rebuilt = threading.local()


def decode_checked(record: dict, section: bytes, xp, verify: bool, init: TensorInit | None = None):
    """A permuted record's values (an ``xp`` array) or a raw record's element bytes, once the section's CRC-32
    and, if ``verify``, the SHA-256 of the result have been checked."""
    container.check_section(record, section)
    permuted = record["kind"] == "permuted"
    with memory_errors_named(record):
        decoded = decode_permuted(record, section, xp, init) if permuted else decode_raw(record, section)
        if getattr(_rebuilt, "callback", None) is not None:
            _rebuilt.callback()
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
        data = self._group_bytes(name)
        if len(data) <= SHARED_GROUP_BYTES:
            with self._last_group_lock:
                self._last_group = (index, data)
        return data

    def _group_outcomes(self, index: int, from_array: Callable, from_member: Callable) -> dict:
        """The outcome of every member of group record ``index``, its group decoded once, or the group's error
        for all: on the CPU, ``from_array`` of its ``member_arrays`` (views of one new buffer, handed out
        together) where numpy holds its dtype in host order, else ``from_member(member, group_bytes)`` of each."""
        members = [self.record(name) for name in self.header["tensors"][index]["names"]]
        try:
            data = self._group_bytes(members[0]["name"])
        except Exception as error:  # kept, to be raised in file order
            return {member["name"]: _Outcome(error=error) for member in members}
        if members[0]["dtype"] in NUMPY_DTYPES and sys.byteorder == "little" and \
                engine_for(self._device) is arrays.NUMPY:
            return {member["name"]: _Outcome(from_array(array))
                    for member, array in zip(members, member_arrays(members, data))}
        return {member["name"]: _Outcome.of(lambda member: from_member(member, data), member)
                for member in members}

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


def decode_all(f: PCFile, progress: bool = False) -> "dict[str, torch.Tensor]":
    """Every tensor of an open file, in file order."""
    import torch

    return _every(f, f.get_tensor, progress, torch.from_numpy, lambda member, data: member_tensor(member, data,
                                                                                                 f._device))


def decode_all_arrays(f: PCFile, progress: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of an open file as a numpy array, in file order, without torch (see ``PCFile.get_array``)."""
    return _every(f, f.get_array, progress, lambda array: array, member_array)


def _every(f: PCFile, get: Callable, progress: bool, from_array: Callable, from_member: Callable) -> dict:
    """``get`` of every tensor, in file order, decoded by WORKERS threads (the caller is one of them).

    The compiled kernels, numpy's sorts, zstd and SHA-256 release the GIL, so
    one thread's Python overlaps another's kernels: each thread takes the next
    job, largest first, so that the last to end are the small ones. A job is
    one tensor, the small raw tensors together (``decode_small_raw``), or a
    group record's members (``from_member`` of each, the group decoded once). The
    small permuted tensors of the commonest kinds are decoded apart, by one
    kernel (``small_tensors``): part of them on the shared pool while the
    threads take the jobs, the rest by the caller once it finds no job left.
    ``from_array`` turns the arrays of either into what
    ``get`` gives. A tensor that fails stops the taking; the failure raised is
    the first in file order, as one at a time would raise: tensors before it
    that were not decoded yet are decoded then, in the caller.
    """
    elements = {name: math.prod(f.record(name)["shape"]) for name in f.keys()}
    bar = progress_lines(sum(elements.values()), "decode", "weights", progress)
    batched = _batched(f, elements)
    pool_share = small_tensors.POOL_SHARE if len(batched) < len(elements) else small_tensors.POOL_SHARE_ALONE
    batch = f._start_batch(batched, pool_share) if batched else None
    apart = set(batched) if batch is not None else set()
    jobs = _jobs(f, [name for name in elements if name not in apart], elements, get, from_array, from_member)
    done = _take_in_parallel(jobs, lambda job: bar.update(job.elements), batch.decode_rest if batch else None)
    if batch is not None:
        done.update(_outcomes(batched, batch.finish(), from_array))
        bar.update(sum(elements[name] for name in batched))
    decoded = {}
    for name in elements:
        if name not in done:
            done.update(_left_over(f, name, get, from_array, from_member))
        decoded[name] = done[name].value()
    bar.close()
    return decoded


def _left_over(f: PCFile, name: str, get: Callable, from_array: Callable, from_member: Callable) -> dict:
    """The outcome of a tensor no job decoded (one failed before it), with its group's other members', so that
    a group is decoded once here too."""
    record = f.record(name)
    if "group" in record:
        return f._group_outcomes(record["group"], from_array, from_member)
    return {name: _Outcome.of(get, name)}


def _batched(f: PCFile, elements: dict[str, int]) -> list[str]:
    """The tensors ``f._start_batch`` takes, in file order: every ``batchable`` one, where its kernel serves."""
    small = [name for name in elements if f._batchable(name)]
    try:
        return small if small and small_tensors.compiled_here(sum(elements[name] for name in small)) else []
    except SpecError:  # an unknown PERMCODEC_BACKEND: the tensors that consult it raise it, in file order
        return []


class _Job(NamedTuple):
    """What one thread decodes in one go: ``run()`` gives the outcome of each of ``names`` (a name it leaves
    out is decoded at the end, one at a time, to raise its error in file order). A helper thread takes it only
    if ``for_a_helper``: its kernels are long enough to run beside the caller's Python. ``fills_the_cores``:
    its kernels run in pieces on the shared pool, one per core (``parallel.run_over``)."""

    names: list[str]
    elements: int
    run: Callable[[], dict]
    for_a_helper: bool
    fills_the_cores: bool = False


def _jobs(f: PCFile, names: list[str], elements: dict[str, int], get: Callable, from_array: Callable,
          from_member: Callable) -> list[_Job]:
    """One job per tensor of ``names``, largest first, then one per group record of theirs, and one for all their
    ``small_raw`` ones (these all Python: the caller takes them first)."""
    group_of = {name: record["group"] for name in names if "group" in (record := f.record(name))}
    tiny = [name for name in names if name not in group_of and f._small_raw(name)]
    apart = set(tiny) | set(group_of)
    in_pieces = _kernels_run_in_pieces(f)
    jobs = sorted((_Job([name], elements[name], lambda name=name: {name: _Outcome.of(get, name)},
                        elements[name] >= HELPER_MIN_ELEMENTS,
                        in_pieces and f.record(name)["kind"] == "permuted" and parallel.splits(elements[name]))
                   for name in names if name not in apart),
                  key=lambda job: job.elements, reverse=True)
    for index in dict.fromkeys(group_of.values()):
        members = f.header["tensors"][index]["names"]
        jobs.append(_Job(members, sum(elements[name] for name in members),
                         lambda index=index: f._group_outcomes(index, from_array, from_member), False))
    if tiny:
        jobs.append(_Job(tiny, sum(elements[name] for name in tiny),
                         lambda: _outcomes(tiny, f._decode_small_raw(tiny), from_array), False))
    return jobs


def _kernels_run_in_pieces(f: PCFile) -> bool:
    """Whether a large permuted tensor's compiled kernels run in pieces on the shared pool here: on the CPU,
    with the numba backend."""
    try:
        return engine_for(f._device) is arrays.NUMPY and backend.chosen() == "numba"
    except SpecError:  # an unknown PERMCODEC_BACKEND: the tensors that consult it raise it, in file order
        return False


def _outcomes(names: list[str], arrays: list, from_array: Callable) -> dict:
    """The outcomes of the arrays that came back (``from_array`` of each); a None is left out."""
    return {name: _Outcome(from_array(array)) for name, array in zip(names, arrays) if array is not None}


class _Outcome:
    """A tensor's result or the exception its decoding raised."""

    def __init__(self, result=None, error: Exception | None = None):
        self.result, self.error = result, error

    @classmethod
    def of(cls, get: Callable, name: str) -> "_Outcome":
        try:
            return cls(get(name))
        except Exception as error:  # kept, to be raised in file order
            return cls(error=error)

    def value(self):
        if self.error is not None:
            raise self.error
        return self.result


# A helper thread takes tensors of at least this many elements: below it a tensor is mostly Python, and two
# threads running Python only trade the GIL (a ResNet's 300 tiny raw tensors took twice as long on two).
HELPER_MIN_ELEMENTS = 1 << 13


def _take_in_parallel(jobs: list[_Job], on_done: Callable[[_Job], None],
                      when_none_left: Callable[[], None] | None = None) -> dict[str, _Outcome]:
    """The outcomes of ``jobs`` (largest first), run in turn by WORKERS threads until one fails or all are done:
    the helper threads take from the large end while the next is ``for_a_helper``, the caller from the small end.
    So the helpers spend their time in long GIL-free kernels while the caller runs the small tensors' Python,
    instead of both threads trading the GIL back and forth over small tensors. The caller runs
    ``when_none_left`` once it finds no job left, before it waits for the helpers' last ones.

    Where the largest job ``fills_the_cores`` and holds at least half the jobs' elements, the caller starts once
    a helper has rebuilt that tensor's values (``_rebuilt``): its jobs then run beside the tensor's SHA-256, one
    thread's work that otherwise ran last and alone, instead of slowing its kernels. Where the rest is larger,
    the caller has enough to do beside the hashes, and waiting only idled its core."""
    left, lock, stop = deque(jobs), threading.Lock(), threading.Event()
    done: dict[str, _Outcome] = {}
    largest, largest_rebuilt = (jobs[0] if jobs else None), threading.Event()
    largest_taken = False

    def run(job: _Job) -> dict:
        if job is not largest:
            return job.run()
        _rebuilt.callback = largest_rebuilt.set
        try:
            return job.run()
        finally:
            _rebuilt.callback = None
            largest_rebuilt.set()

    def take(from_large_end: bool) -> None:
        nonlocal largest_taken
        try:
            if not from_large_end and caller_waits:
                largest_rebuilt.wait()
            while not stop.is_set():
                with lock:
                    if not left or (from_large_end and not left[0].for_a_helper):
                        return
                    job = left.popleft() if from_large_end else left.pop()
                    largest_taken = largest_taken or job is largest
                outcomes = run(job)
                done.update(outcomes)
                if any(outcome.error is not None for outcome in outcomes.values()):
                    stop.set()
                with lock:
                    on_done(job)
        except BaseException:  # e.g. KeyboardInterrupt in the caller: no thread takes another tensor
            stop.set()
            raise
        finally:
            with lock:
                if from_large_end and not largest_taken:  # no helper will take it now: the caller waits no more
                    largest_rebuilt.set()

    def take_then_rest() -> None:
        take(from_large_end=False)
        if when_none_left is not None and not stop.is_set():
            when_none_left()

    helpers = max(0, min(parallel.WORKERS, len(jobs)) - 1) if jobs and jobs[0].for_a_helper else 0
    pool, futures = None, []
    if helpers:
        try:
            pool = ThreadPoolExecutor(helpers, thread_name_prefix="permcodec-tensors")
            futures = [pool.submit(take, True) for _ in range(helpers)]
        except RuntimeError:  # no thread to be had (a thread limit, the interpreter shutting down): the caller
            pass              # takes every job that no helper took
    caller_waits = bool(futures) and largest.fills_the_cores and \
        2 * largest.elements >= sum(job.elements for job in jobs)
    try:
        take_then_rest()
        for future in futures:
            future.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return done
