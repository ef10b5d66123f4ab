"""Bounded zstd frames (specs/format.md Section 14): one frame per section, its size declared and checked.

Every decoder takes the size it expects from the (already checked) header and
rejects a frame that declares or yields anything else, so a hostile frame can
never make it allocate more than the header allowed.
"""

from __future__ import annotations

import threading

import zstandard

from ..errors import FormatError

# zstd level when a caller names none; the encoder passes its level's own
# (schemes.LEVELS: 3, 19, 22). Any level decodes at the same speed.
DEFAULT_ZSTD_LEVEL = 19
ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878 3.1.1; skippable frames have other magics


def compress(data: bytes, level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """One zstd frame that declares its content size and carries no dictionary."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False).compress(data)


def decompress_exact(frame: bytes, size: int, what: str) -> bytes:
    """Decode one zstd frame that must declare and yield exactly ``size`` bytes, with nothing after it."""
    check_frame_size(frame, size, what)
    context = _thread_decompressor() if size <= REUSED_CONTEXT_MAX else zstandard.ZstdDecompressor()
    decompressor = context.decompressobj()
    try:
        out = decompressor.decompress(frame)
    except zstandard.ZstdError as err:
        raise FormatError(f"{what}: corrupt zstd frame ({err})") from None
    if len(out) != size or not decompressor.eof:
        raise FormatError(f"{what}: zstd frame is truncated ({len(out)} of {size} bytes)")
    if decompressor.unused_data:
        raise FormatError(f"{what}: {len(decompressor.unused_data)} bytes after the zstd frame")
    return out


_per_thread = threading.local()
# A context keeps a buffer the size of the largest window it has decoded (up to 128 MiB at level 22), so only
# frames up to this size, whose windows are no larger, share a thread's context; a larger one gets its own.
REUSED_CONTEXT_MAX = 1 << 20


def _thread_decompressor() -> zstandard.ZstdDecompressor:
    """This thread's context for small frames: making one costs more than a small section's decoding, and one
    context must not serve two threads at once."""
    if not hasattr(_per_thread, "decompressor"):
        _per_thread.decompressor = zstandard.ZstdDecompressor()
    return _per_thread.decompressor


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
