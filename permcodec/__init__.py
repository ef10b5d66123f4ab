"""permcodec: store LaPerm models as an RNG spec plus one permutation per row."""

from .errors import (FormatError, IntegrityError, LimitError, NotAPermutationError, PermcodecError,
                     SpecError, UnsupportedVersionError)
from .initspec import InitSpec, TensorInit, init_
from .laperm import LaPerm

__version__ = "0.1.0"

__all__ = [
    "PermcodecError", "SpecError", "FormatError", "UnsupportedVersionError", "LimitError",
    "IntegrityError", "NotAPermutationError",
    "InitSpec", "TensorInit", "init_", "LaPerm",
]
