"""The one place that picks the integer kernels: numba when it is installed, unless PERMCODEC_BACKEND=numpy.

Each accelerated module has two files with the same function names, a numba
one and a fallback (``format/_rans_numba.py`` and ``_rans_numpy.py``;
``init/_philox_numba.py`` and ``_philox_torch.py``). They give identical
words, and the tests compare them; ``kernels`` hands out the chosen one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

from .errors import SpecError

NAMES = ("numba", "numpy")
AVAILABLE = NAMES if importlib.util.find_spec("numba") is not None else ("numpy",)
ENVIRONMENT_VARIABLE = "PERMCODEC_BACKEND"


def chosen(backend: str | None = None) -> str:
    """``backend`` if given, else $PERMCODEC_BACKEND, else numba where it is installed.

    An unknown name is a SpecError. Asking for numba by name where it is not
    installed is a ValueError; the environment's default falls back to numpy.
    """
    if backend is None:
        wanted = os.environ.get(ENVIRONMENT_VARIABLE, AVAILABLE[0])
        if wanted not in NAMES:
            raise SpecError(f"{ENVIRONMENT_VARIABLE} must be 'numba' or 'numpy', found {wanted!r}")
        return wanted if wanted in AVAILABLE else AVAILABLE[0]
    if backend not in AVAILABLE:
        raise ValueError(f"backend {backend!r} is not available here; available: {', '.join(AVAILABLE)}")
    return backend


def kernels(package: str, numba_module: str, fallback_module: str, backend: str | None = None):
    """The module of ``package`` that implements the chosen backend (imported on first use)."""
    name = numba_module if chosen(backend) == "numba" else fallback_module
    return importlib.import_module(f"{package}.{name}")
