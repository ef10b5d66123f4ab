"""permcodec: store LaPerm models as an RNG spec plus one permutation per row."""

from .codec import PCFile, decode, encode, load, load_into, safe_open, save
from .errors import (
                     FormatError,
                     IntegrityError,
                     LimitError,
                     MemoryLimitError,
                     NotAPermutationError,
                     PermcodecError,
                     SpecError,
                     UnsupportedVersionError,
)
from .init.initspec import InitSpec, TensorInit, init_
from .train.laperm import LaPerm

__version__ = "0.1.0"

__all__ = [
    "PermcodecError", "SpecError", "FormatError", "UnsupportedVersionError", "LimitError", "MemoryLimitError",
    "IntegrityError", "NotAPermutationError",
    "InitSpec", "TensorInit", "init_", "LaPerm",
    "encode", "decode", "save", "load", "load_into", "safe_open", "PCFile",
]
