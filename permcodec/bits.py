"""A tensor's bits as bytes: what "bit-identical" means everywhere in permcodec.

The elements in C order, little-endian whatever the host, so that a SHA-256
stored in a .pc file (specs/format.md 6.1) and a digest compared between
training ranks (`state_digest`) mean the same on every machine. Shared by the
codec and the trainer, which never import each other. numpy arrays (the CPU
decoder's) and torch tensors give the same bytes for the same elements.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping

from typing import TYPE_CHECKING

import numpy as np

from .errors import SpecError

if TYPE_CHECKING:
    import torch

# The record dtypes numpy holds (specs/format.md 6.2), little-endian; bfloat16 has no numpy dtype.
NUMPY_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in
                ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}


def tensor_bytes(tensor: "torch.Tensor | np.ndarray") -> bytes:
    """The tensor's (or numpy array's) elements in C order as little-endian bytes, whatever the host's byte order."""
    if isinstance(tensor, np.ndarray):
        flat = np.ascontiguousarray(tensor).reshape(-1)
        return _little_endian(flat.view(np.uint8).tobytes(), flat.itemsize) if flat.size else b""
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if not flat.numel():
        return b""
    return _little_endian(flat.view(torch.uint8).numpy().tobytes(), flat.element_size())


def tensor_from_bytes(data: bytes, dtype: "torch.dtype", shape) -> "torch.Tensor":
    """The CPU tensor whose C-order little-endian element bytes are ``data`` (the inverse of tensor_bytes)."""
    import torch

    if not data:
        return torch.empty(shape, dtype=dtype)
    data = _little_endian(data, dtype.itemsize)  # the swap is its own inverse
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)


def array_from_bytes(data: bytes, dtype: str, shape, what: str) -> np.ndarray:
    """The numpy array (of record dtype name ``dtype``) whose C-order little-endian element bytes are ``data``;
    a bytearray becomes the array's memory, anything else is copied (the array is writeable either way)."""
    if dtype not in NUMPY_DTYPES:
        raise SpecError(f"{what} is {dtype}, which numpy has no dtype for; read it as a torch tensor (get_tensor)")
    return np.frombuffer(data if isinstance(data, bytearray) else bytearray(data),
                         dtype=NUMPY_DTYPES[dtype]).reshape(shape)


def _little_endian(data: bytes, itemsize: int) -> bytes:
    """Element bytes in host order turned little-endian (or back): reversed per element on a big-endian host."""
    if sys.byteorder != "big" or itemsize == 1:
        return data
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize)[:, ::-1].tobytes()


def sha256_of(tensor: "torch.Tensor | np.ndarray") -> bytes:
    """SHA-256 of ``tensor_bytes``; a C-ordered numpy array on a little-endian host is hashed in place."""
    if isinstance(tensor, np.ndarray) and tensor.flags.c_contiguous and sys.byteorder == "little" and tensor.size:
        return hashlib.sha256(tensor.reshape(-1).view(np.uint8)).digest()
    return hashlib.sha256(tensor_bytes(tensor)).digest()


def state_digest(state: "Mapping[str, torch.Tensor]") -> str:
    """SHA-256 (hex) of each name's UTF-8 bytes then its tensor_bytes, in the mapping's own order."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()
