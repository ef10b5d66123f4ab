"""A tensor's bits as bytes: what "bit-identical" means everywhere in permcodec.

The elements in C order, little-endian whatever the host, so that a SHA-256
stored in a .pc file (specs/format.md 6.1) and a digest compared between
training ranks mean the same on every machine. Shared by the codec and the
trainer, which never import each other.
"""

from __future__ import annotations

import hashlib
import sys

import torch


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements in C order as little-endian bytes, whatever the host's byte order."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if not flat.numel():
        return b""
    if sys.byteorder == "big" and flat.element_size() > 1:
        return flat.view(torch.uint8).numpy().reshape(-1, flat.element_size())[:, ::-1].tobytes()
    return flat.view(torch.uint8).numpy().tobytes()


def sha256_of(tensor: torch.Tensor) -> bytes:
    return hashlib.sha256(tensor_bytes(tensor)).digest()
