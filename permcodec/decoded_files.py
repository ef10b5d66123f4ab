"""Decoded tensors written out: .safetensors (with what ``encode`` needs to rebuild the .pc) or a .pt checkpoint.

torch is imported only for torch tensors and .pt files: numpy arrays (the CPU
decoder's) go to .safetensors through safetensors' numpy API, with the same
bytes as from torch tensors.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from .atomicfile import atomic_write, atomic_write_bytes, check_output_path
from .init.initspec import InitSpec

if TYPE_CHECKING:
    from pathlib import Path

    import torch

SAFETENSORS_INIT_KEY = "permcodec.init"    # the init spec, as JSON
SAFETENSORS_ORDER_KEY = "permcodec.order"  # the tensor names in the .pc file's order, as JSON (safetensors sorts)
OUTPUT_SUFFIXES = (".safetensors", ".pt")


def check_decode_output(path, overwrite: bool = True) -> Path:
    """A writable path ending in one of OUTPUT_SUFFIXES."""
    return check_output_path(path, OUTPUT_SUFFIXES, "decode writes .safetensors or .pt files: the output",
                             overwrite)


def on_cpu(tensors: "dict[str, torch.Tensor]") -> "dict[str, torch.Tensor]":
    """Contiguous CPU copies (where needed) of decoded tensors, as both writers store them."""
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def write_decoded(path, tensors: "dict[str, torch.Tensor | np.ndarray]", spec: InitSpec,
                  metadata: dict[str, str]) -> None:
    """Decoded tensors in a form ``encode`` takes back to the same .pc bytes, atomically.

    .safetensors: the init spec, the tensor order and the .pc metadata go in its metadata map (keys sorted);
    .pt: the permcodec checkpoint layout ``{"state_dict", "init", "metadata"}``.
    """
    path = check_decode_output(path)
    if path.suffix.lower() == ".safetensors":
        extra = {SAFETENSORS_INIT_KEY: json.dumps(spec.to_dict()), SAFETENSORS_ORDER_KEY: json.dumps(list(tensors))}
        write_tensors(path, tensors, dict(sorted({**metadata, **extra}.items())))
        return
    import torch

    checkpoint = {"state_dict": on_cpu(as_tensors(tensors)), "init": spec.to_dict(), "metadata": dict(metadata)}
    atomic_write(path, lambda temp: torch.save(checkpoint, temp))


def sorted_metadata(data: bytes) -> bytes:
    """safetensors bytes with the header's metadata keys in sorted order.

    safetensors writes its metadata map in hash order, which changes from one process to the next; with the
    keys sorted, decoding a file twice gives the same bytes. Only the order changes, so the header keeps its
    length and every offset holds (if it did not, the bytes are returned as they were).
    """
    length = int.from_bytes(data[:8], "little")
    text = data[8:8 + length].decode("utf-8")
    header = json.loads(text)
    if "__metadata__" not in header:
        return data
    header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    body = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(body) > length:
        return data
    return data[:8] + body + b" " * (length - len(body)) + data[8 + length:]


def write_tensors(path, tensors: "dict[str, torch.Tensor | np.ndarray]",
                  metadata: dict[str, str] | None = None) -> None:
    """Write decoded tensors (all torch tensors, or all numpy arrays) as .safetensors or as a .pt dict of tensors,
    atomically."""
    path = check_decode_output(path)
    if path.suffix.lower() == ".safetensors":
        atomic_write_bytes(path, sorted_metadata(safetensors_bytes(tensors, metadata)))
        return
    import torch

    tensors = on_cpu(as_tensors(tensors))
    atomic_write(path, lambda temp: torch.save(tensors, temp))


def safetensors_bytes(tensors: "dict[str, torch.Tensor | np.ndarray]", metadata: dict[str, str] | None) -> bytes:
    """The .safetensors bytes of the tensors; numpy arrays go through safetensors.numpy, without torch."""
    if tensors and all(isinstance(t, np.ndarray) for t in tensors.values()):
        import safetensors.numpy

        return safetensors.numpy.save({name: c_order(a) for name, a in tensors.items()}, metadata=metadata)
    import safetensors.torch

    return safetensors.torch.save(on_cpu(as_tensors(tensors)), metadata=metadata)


def c_order(array: np.ndarray) -> np.ndarray:
    """The array in C order, its shape kept (``np.ascontiguousarray`` makes a 0-D array 1-D)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def as_tensors(tensors: dict) -> "dict[str, torch.Tensor]":
    """torch tensors of numpy arrays (sharing their memory); tensors as they are."""
    import torch

    return {name: torch.from_numpy(t) if isinstance(t, np.ndarray) else t for name, t in tensors.items()}
