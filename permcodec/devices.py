"""The one check of a device name a user gives (the trainer's config, the CLI's --device)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import SpecError

if TYPE_CHECKING:
    import torch


def checked_device(name: "str | torch.device", *, allow_auto: bool = False) -> torch.device:
    """The torch.device that `name` (a string or a torch.device) asks for: cpu, cuda, cuda:N, or auto (CUDA when
    present) if `allow_auto`."""
    import torch  # here, so that importing permcodec.devices stays cheap for the CLI

    if isinstance(name, torch.device):
        name = str(name)
    if allow_auto and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (isinstance(name, str) and re.fullmatch(r"cpu|cuda(:[0-9]+)?", name)):
        choices = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
        raise SpecError(f"device must be {choices}, found {name!r}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {name!r} was asked for, but no CUDA device is available")
    if device.index is not None and device.index >= torch.cuda.device_count():
        present = ", ".join(f"cuda:{index}" for index in range(torch.cuda.device_count()))
        raise SpecError(f"device {name!r} was asked for, but the CUDA devices here are {present}")
    return device
