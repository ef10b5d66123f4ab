"""Index coding: zigzag signed integers and byte planes (scheme ``delta``, specs/format.md Section 8).

Pure functions over numpy arrays and bytes; nothing here knows about tensors
or files.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError


def zigzag(deltas: np.ndarray) -> np.ndarray:
    """Signed int64 -> uint64: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    d = deltas.astype(np.int64, copy=False)
    return ((d << 1) ^ (d >> 63)).view(np.uint64)


def unzigzag(codes: np.ndarray) -> np.ndarray:
    """uint64 -> signed int64, the inverse of ``zigzag``."""
    z = codes.astype(np.uint64, copy=False)
    return ((z >> np.uint64(1)).view(np.int64)) ^ -((z & np.uint64(1)).view(np.int64))


def byte_width(max_value: int) -> int:
    """Bytes needed to hold integers in [0, max_value] (at least 1)."""
    return max(1, (int(max_value).bit_length() + 7) // 8)


def to_byte_planes(values: np.ndarray, width: int) -> bytes:
    """uint64 values -> ``width`` planes: all lowest bytes first, then all next bytes, ..."""
    as_bytes = values.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)
    return np.ascontiguousarray(as_bytes[:, :width].T).tobytes()


def from_byte_planes(data: bytes, count: int, width: int) -> np.ndarray:
    """The inverse of ``to_byte_planes``: ``count`` uint64 values."""
    if len(data) != count * width:
        raise FormatError(f"byte planes hold {len(data)} bytes, expected {count} values x {width} bytes")
    planes = np.frombuffer(data, dtype=np.uint8).reshape(width, count)
    wide = np.zeros((count, 8), dtype=np.uint8)
    wide[:, :width] = planes.T
    return wide.view("<u8").reshape(count).astype(np.uint64, copy=False)
