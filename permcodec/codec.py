"""Encode LaPerm models to .pc files and decode them bit-exactly on any device.

    data = permcodec.encode(model)                 # module initialized by permcodec.init_
    permcodec.save(state_dict, "m.pc", init=spec)
    tensors = permcodec.load("m.pc", device="cuda")
    with permcodec.safe_open("m.pc") as f:
        w = f.get_tensor("layers.0.weight")       # reads only that tensor's bytes

A permuted tensor is stored as its init record plus its rows' arrangement in
one of the index schemes of ``schemes`` (delta, exact, multiset), the smallest
that the encoding level tries. Every other tensor is stored losslessly,
byte-shuffled and zstd-compressed ("raw"). See specs/format.md.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from . import perm
from .bits import sha256_of, tensor_bytes  # noqa: F401 (part of the codec's API)
from .bits import tensor_from_bytes
from .errors import FormatError, IntegrityError, MemoryLimitError, NotAPermutationError, SpecError
from .fileio import atomic_write_bytes
from .format import container, indexcode, schemes
from .format.container import RAW_CODEC, Limits
from .init.initspec import InitSpec, TensorInit, attached_spec, refuse_aliased
from .init.philox import RNG_NAME

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
                "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


# ---------------------------------------------------------------- shared helpers

def dtype_name(tensor: torch.Tensor, name: str) -> str:
    if tensor.dtype not in DTYPE_NAMES:
        raise SpecError(f"tensor {name!r} has dtype {tensor.dtype}, which permcodec does not store; "
                        f"supported: {', '.join(TORCH_DTYPES)}")
    return DTYPE_NAMES[tensor.dtype]


# ---------------------------------------------------------------- encoding

def resolve(obj, init) -> tuple[dict[str, torch.Tensor], InitSpec]:
    """The state_dict and init spec behind a module, a checkpoint dict or a state_dict."""
    if isinstance(obj, nn.Module):
        state, spec = obj.state_dict(), init or attached_spec(obj)
    elif isinstance(obj, Mapping) and "state_dict" in obj and not isinstance(obj["state_dict"], torch.Tensor):
        state = obj["state_dict"]
        spec = init or (InitSpec.from_dict(obj["init"]) if obj.get("init") is not None else None)
    elif isinstance(obj, Mapping):
        state, spec = obj, init
    else:
        raise SpecError(f"can only encode a module, a state_dict or a checkpoint dict, not {type(obj).__name__}")
    if spec is None:
        raise SpecError("no init spec: pass init=..., or encode a module initialized by permcodec.init_, "
                        "or a checkpoint with an 'init' record")
    if isinstance(spec, Mapping):
        spec = InitSpec.from_dict(spec)
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise SpecError(f"state_dict entry {name!r} is not a named tensor")
    missing = [name for name in spec.names() if name not in state]
    if missing:
        raise SpecError(f"init spec names tensor(s) the state_dict lacks: {', '.join(missing)}")
    refuse_aliased(state.items(), names=spec.names())
    return dict(state), spec


def initial_rows(record: TensorInit, device="cpu") -> perm.SortedRows:
    """A tensor's initial values as rows, regenerated from its record, with their sort order."""
    return perm.SortedRows.of(record.regenerate(device).reshape(perm.row_shape(record.shape)))


def mismatch(tensor: torch.Tensor, record: TensorInit) -> str | None:
    """Why ``tensor`` cannot be a permutation of ``record``'s pool at all, or None."""
    if tensor.dtype != torch.float32:
        return f"dtype is {tensor.dtype}, pools are float32"
    if tuple(tensor.shape) != record.shape:
        return f"shape is {tuple(tensor.shape)}, init spec says {record.shape}"
    return None


def first_bad_row(trained: perm.SortedRows, initial: perm.SortedRows) -> int | None:
    """None if every trained row holds exactly its initial row's values, else the first row that does not."""
    if trained.rows.numel() == 0:  # a per-row flag would cost a byte for each of up to 2^31 - 1 empty rows
        return None
    ok = perm.same_bits_per_row(trained.pool(), initial.pool())
    return None if bool(ok.all()) else int((~ok).nonzero()[0])


def permuted_record(name: str, tensor: torch.Tensor, record: TensorInit, scheme: str, params: dict) -> dict:
    return {"name": name, "kind": "permuted", "dtype": "float32", "shape": list(record.shape),
            "sha256": sha256_of(tensor),
            "init": {"rng": RNG_NAME, "seed": record.seed, "stream": record.stream, "dist": record.dist,
                     "params": record.params},
            "scheme": scheme, "scheme_params": params}


def raw_record(name: str, tensor: torch.Tensor) -> dict:
    return {"name": name, "kind": "raw", "dtype": dtype_name(tensor, name), "shape": list(tensor.shape),
            "sha256": sha256_of(tensor), "codec": RAW_CODEC}


def encode_raw(tensor: torch.Tensor, level: int) -> bytes:
    return indexcode.compress(indexcode.shuffle_bytes(tensor_bytes(tensor), tensor.element_size()), level)


@dataclass(frozen=True)
class Fallback:
    """A tensor of the init spec that was stored raw because it is not a permutation."""

    name: str
    row: int
    reason: str


def encode(obj, init=None, *, raw_fallback: bool = False, level: str = schemes.DEFAULT_LEVEL,
           scheme: str | None = None, metadata: dict[str, str] | None = None, progress: bool = False,
           fallbacks: list | None = None) -> bytes:
    """The .pc bytes of a module, checkpoint dict ``{"state_dict", "init"}`` or state_dict.

    ``level`` ("fast", "default", "max"; see ``schemes.LEVELS``) sets which index
    schemes are tried per tensor and how hard; the smallest is kept. ``scheme``
    forces one scheme ("delta", "exact", "multiset") for every permuted tensor.
    Raises NotAPermutationError for a tensor of the spec that is not a per-row
    permutation of its init, unless ``raw_fallback``: then it is stored
    losslessly and a ``Fallback`` is appended to ``fallbacks``.
    """
    from tqdm import tqdm

    state, spec = resolve(obj, init)
    level = schemes.level_named(level)
    if scheme is not None and scheme not in schemes.SCHEMES:
        raise SpecError(f"unknown scheme {scheme!r}; choose one of {', '.join(schemes.SCHEMES)}")
    records, sections = [], []
    bar = tqdm(total=sum(t.numel() for t in state.values()), disable=not progress, unit="w", unit_scale=True,
               desc="encode", leave=False)
    for name, tensor in state.items():
        if name in spec:
            row, reason = 0, mismatch(tensor, spec[name])
            if reason is None:
                initial = initial_rows(spec[name])
                trained = perm.SortedRows.of(perm.as_rows(tensor.detach().cpu()))
                row = first_bad_row(trained, initial)
                if row is None:
                    chosen, params, section = schemes.encode_best(trained, initial, level, scheme)
                    records.append(permuted_record(name, tensor, spec[name], chosen, params))
                    sections.append(section)
                    bar.update(tensor.numel())
                    continue
                reason = "its values differ from the initial values of that row"
            if not raw_fallback:
                raise NotAPermutationError(f"tensor {name!r}: row {row} is not a permutation of its initial "
                                           f"values ({reason}); did training end on LaPerm.sync()? To store it "
                                           f"losslessly anyway use raw_fallback=True (CLI: --raw-fallback)")
            if fallbacks is not None:
                fallbacks.append(Fallback(name, row, reason))
        records.append(raw_record(name, tensor))
        sections.append(encode_raw(tensor, level.zstd_level))
        bar.update(tensor.numel())
    bar.close()
    return container.pack(records, sections, metadata)


def save(obj, path, init=None, **options) -> None:
    """Encode ``obj`` (see ``encode``) and write it to ``path`` atomically."""
    atomic_write_bytes(path, encode(obj, init, **options))


# ---------------------------------------------------------------- decoding

def init_of(record: dict) -> TensorInit:
    """The TensorInit of a permuted record (whose fields ``container.parse_header`` has checked)."""
    init = record["init"]
    fields = {key: init[key] for key in ("seed", "stream", "dist", "params")}
    try:
        return TensorInit.from_dict({"name": record["name"], "shape": record["shape"], **fields})
    except SpecError as err:
        raise FormatError(f"bad init record: {err}") from None


def decode_permuted(record: dict, section: bytes, device) -> torch.Tensor:
    what = f"tensor {record['name']!r}"
    rows, n = perm.row_shape(record["shape"])
    schemes.check_layout(record["scheme"], record["scheme_params"], rows, n, section, what)
    if rows * n == 0:  # nothing to regenerate: the section's own bytes were all there was to check
        return torch.empty(record["shape"], dtype=torch.float32, device=device)
    init = init_of(record)
    initial = init.regenerate(device).reshape(rows, n)
    return schemes.decode(record["scheme"], record["scheme_params"], initial, section, what).reshape(init.shape)


def decode_raw(record: dict, section: bytes, device) -> torch.Tensor:
    name, dtype = record["name"], record["dtype"]
    itemsize = container.DTYPE_SIZES[dtype]
    count = math.prod(record["shape"])
    data = indexcode.unshuffle_bytes(
        indexcode.decompress_exact(section, count * itemsize, f"tensor {name!r}"), itemsize)
    if dtype == "bool" and data.translate(None, b"\x00\x01"):
        raise FormatError(f"tensor {name!r}: bool tensor holds bytes other than 0 and 1")
    return tensor_from_bytes(data, TORCH_DTYPES[dtype], record["shape"]).to(device)


def decode_record(record: dict, section: bytes, device, verify: bool) -> torch.Tensor:
    container.check_section(record, section)
    with memory_errors_named(record):
        if record["kind"] == "permuted":
            tensor = decode_permuted(record, section, device)
        else:
            tensor = decode_raw(record, section, device)
        if verify and sha256_of(tensor) != record["sha256"]:
            raise IntegrityError(f"tensor {record['name']!r}: decoded bits do not match the stored SHA-256")
    return tensor


@contextmanager
def memory_errors_named(record: dict):
    """Turn running out of memory on a tensor the file declares into a MemoryLimitError naming it."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, MemoryLimitError) or not is_out_of_memory(err):
            raise
        detail = str(err).splitlines()[0] if str(err) else "no details"
        raise MemoryLimitError(f"tensor {record['name']!r}: not enough memory for its "
                               f"{math.prod(record['shape']):,} elements ({type(err).__name__}: {detail})") from None


def is_out_of_memory(err: BaseException) -> bool:
    """numpy's and Python's MemoryError, torch's CPU allocator failure, or CUDA's out-of-memory error."""
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err)


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


class PCFile:
    """Lazy access to a .pc file, the safetensors ``safe_open`` way: only the header is read up front.

    ``source`` is a bytes-like object or a seekable binary stream. Every method
    may be called from several threads at once.
    """

    def __init__(self, source, device="cpu", verify: bool = True, limits: Limits | None = None,
                 owns_stream: bool = False):
        self._stream = source
        self._owns_stream = owns_stream
        self.device = torch.device(device)
        self.verify = verify
        size, self._read_at = positional_reader(source)
        self.header, self._data_start = read_header(size, self._read_at, limits)
        self._records = {record["name"]: record for record in self.header["tensors"]}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._owns_stream:
            self._stream.close()

    def keys(self) -> list[str]:
        return list(self._records)

    def metadata(self) -> dict[str, str]:
        return dict(self.header["metadata"])

    def record(self, name: str) -> dict:
        if name not in self._records:
            raise KeyError(f"no tensor {name!r} in this file")
        return self._records[name]

    def read_section(self, name: str) -> bytes:
        record = self.record(name)
        return self._read_at(self._data_start + record["offset"], record["length"])

    def get_tensor(self, name: str) -> torch.Tensor:
        return decode_record(self.record(name), self.read_section(name), self.device, self.verify)


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


def safe_open(path, device="cpu", verify: bool = True, limits: Limits | None = None) -> PCFile:
    """Open a .pc file for lazy per-tensor reads; use as a context manager."""
    stream = open(path, "rb")
    try:
        return PCFile(stream, device, verify, limits, owns_stream=True)
    except BaseException:
        stream.close()
        raise


def decode(data: bytes, device="cpu", verify: bool = True, limits: Limits | None = None,
           progress: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a .pc file given as bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SpecError(f"decode takes the bytes of a .pc file, not {type(data).__name__}; "
                        f"to read a file by its path use permcodec.load(path)")
    return _decode_all(PCFile(data, device, verify, limits), progress)


def load(path, device="cpu", verify: bool = True, limits: Limits | None = None,
         progress: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of the .pc file at ``path``, rebuilt bit-exactly on ``device``."""
    with safe_open(path, device, verify, limits) as f:
        return _decode_all(f, progress)


def _decode_all(f: PCFile, progress: bool) -> dict[str, torch.Tensor]:
    from tqdm import tqdm

    names = f.keys()
    return {name: f.get_tensor(name) for name in tqdm(names, disable=not progress, desc="decode", leave=False)}


def load_into(module: nn.Module, path, strict: bool = True, verify: bool = True):
    """Fill ``module``'s parameters and buffers from a .pc file (on the module's device)."""
    first = next(iter(module.state_dict().values()), None)
    device = first.device if first is not None else "cpu"
    return module.load_state_dict(load(path, device=device, verify=verify), strict=strict)

