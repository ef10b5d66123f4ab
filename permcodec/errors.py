"""The one exception hierarchy of permcodec.

Every error that bad input can cause is a ``PermcodecError``; anything else
escaping permcodec is a bug.
"""

import sys


class PermcodecError(Exception):
    """Base class of every error permcodec raises on bad input."""


class SpecError(PermcodecError, ValueError):
    """Bad arguments or a bad init spec (unknown distribution, density out of range, ...)."""


class FormatError(PermcodecError, ValueError):
    """Bytes that are not a valid permcodec file."""


class UnsupportedVersionError(FormatError):
    """A file written in a format version this decoder does not implement."""


class LimitError(FormatError):
    """A file that exceeds a decoder limit (header size, tensor count, element count, ...)."""


class MemoryLimitError(LimitError, MemoryError):
    """The machine ran out of memory for a tensor the file declares (a MemoryError too)."""


class IntegrityError(PermcodecError):
    """A checksum or content hash that does not match."""


class NotAPermutationError(PermcodecError):
    """A tensor that is not a per-row permutation of its initial pool."""


def is_out_of_memory(err: BaseException) -> bool:
    """numpy's and Python's MemoryError, torch's CPU allocator failure, or CUDA's out-of-memory error."""
    torch = sys.modules.get("torch")  # a torch error can only come from a process that imported torch
    if torch is not None and isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, MemoryError) or "can't allocate memory" in str(err)
