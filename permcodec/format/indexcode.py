"""Index and byte coding: zigzag, byte planes, byte shuffle and bounded zstd frames.

Pure functions over numpy arrays and bytes; nothing here knows about tensors
or files. Every decoder takes the size it expects from the (already checked)
header and rejects a frame that declares or yields anything else, so a hostile
frame can never make it allocate more than the header allowed.
"""

from __future__ import annotations

import numpy as np
import zstandard

from ..errors import FormatError

# zstd level when a caller names none; the encoder passes its level's own
# (schemes.LEVELS: 3, 19, 22). Any level decodes at the same speed.
DEFAULT_ZSTD_LEVEL = 19
ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878 3.1.1; skippable frames have other magics


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


def shuffle_bytes(data: bytes, itemsize: int) -> bytes:
    """Byte shuffle: byte j of every item together, for j = 0 .. itemsize-1."""
    if itemsize == 1:
        return bytes(data)
    return np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize).T).tobytes()


def unshuffle_bytes(data: bytes, itemsize: int) -> bytes:
    if itemsize == 1:
        return bytes(data)
    return np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1).T).tobytes()


def compress(data: bytes, level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """One zstd frame that declares its content size and carries no dictionary."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False).compress(data)


def decompress_exact(frame: bytes, size: int, what: str) -> bytes:
    """Decode one zstd frame that must declare and yield exactly ``size`` bytes, with nothing after it."""
    check_frame_size(frame, size, what)
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = decompressor.decompress(frame)
    except zstandard.ZstdError as err:
        raise FormatError(f"{what}: corrupt zstd frame ({err})") from None
    if len(out) != size or not decompressor.eof:
        raise FormatError(f"{what}: zstd frame is truncated ({len(out)} of {size} bytes)")
    if decompressor.unused_data:
        raise FormatError(f"{what}: {len(decompressor.unused_data)} bytes after the zstd frame")
    return out


def check_frame_size(frame: bytes, size: int, what: str) -> None:
    """The frame starts with the zstd magic and declares exactly ``size`` bytes (checked before decompressing)."""
    if bytes(frame[:4]) != ZSTD_FRAME_MAGIC:
        raise FormatError(f"{what}: section does not start with a zstd frame (magic {bytes(frame[:4]).hex()}, "
                          f"expected {ZSTD_FRAME_MAGIC.hex()}; skippable frames are not allowed)")
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as err:
        raise FormatError(f"{what}: not a zstd frame ({err})") from None
    if declared != size:
        shown = "no size" if declared == zstandard.CONTENTSIZE_UNKNOWN else f"{declared} bytes"
        raise FormatError(f"{what}: zstd frame declares {shown}, header says {size} bytes")
