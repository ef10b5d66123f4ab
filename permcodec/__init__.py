"""permcodec: store LaPerm models as an RNG spec plus one permutation per row.

The public names load on first use (PEP 562), so that ``permcodec --help`` and
argument errors import neither torch nor numba.
"""

import importlib

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

__version__ = "0.1.0"

_HOMES = {
    "encode": "codec", "decode": "codec", "save": "codec", "load": "codec", "load_into": "codec",
    "safe_open": "decoder", "PCFile": "decoder", "load_spec": "codec", "describe": "inspection",
    "InitSpec": "init.initspec", "TensorInit": "init.initspec", "init_": "init.modules",
    "LaPerm": "train.laperm",
}

__all__ = [
    "PermcodecError", "SpecError", "FormatError", "UnsupportedVersionError", "LimitError", "MemoryLimitError",
    "IntegrityError", "NotAPermutationError",
    "InitSpec", "TensorInit", "init_", "LaPerm",
    "encode", "decode", "save", "load", "load_into", "safe_open", "PCFile", "load_spec", "describe",
]


def __getattr__(name: str):
    """A public name from its module, or a submodule (``permcodec.codec``), imported on first use."""
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
