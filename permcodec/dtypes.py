"""The dtypes a .pc file stores: the record names of the container (``DTYPE_SIZES``) as torch dtypes."""

from __future__ import annotations

import torch

from .errors import SpecError
from .format.container import DTYPE_SIZES

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPE_SIZES}  # the record names are torch's own
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def dtype_name(tensor: torch.Tensor, name: str) -> str:
    """The record's dtype name of a tensor; SpecError naming the tensor for a dtype permcodec does not store."""
    if tensor.dtype not in DTYPE_NAMES:
        raise SpecError(f"tensor {name!r} has dtype {tensor.dtype}, which permcodec does not store; "
                        f"supported: {', '.join(TORCH_DTYPES)}")
    return DTYPE_NAMES[tensor.dtype]
