"""Loading a torch checkpoint without running code from it: the one place both the codec and the trainer use.

``torch.load(weights_only=True)`` admits tensors and plain containers only; its
refusal is turned into one plain FormatError line.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .errors import FormatError, MemoryLimitError, is_out_of_memory


def load_weights_only(path: Path):
    """The object in the torch checkpoint at ``path``; FormatError if it holds anything but tensors and plain
    containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # the file cannot be read: not a statement about its contents
        raise
    except Exception as err:  # noqa: BLE001 - torch's weights-only unpickler (Python, runs no code) raises whatever
        # a malformed pickle trips: UnpicklingError, but also IndexError on an empty stack, KeyError on a missing
        # memo entry, struct.error on a short argument. Each means the same: not a checkpoint.
        if is_out_of_memory(err):
            raise MemoryLimitError(f"{path}: not enough memory to load it ({type(err).__name__})") from None
        raise FormatError(f"{path} is not a weights-only torch checkpoint: {why_not_weights_only(err)}") from None


def why_not_weights_only(err: BaseException) -> str:
    """torch's refusal in one plain line: the class the pickle names, without torch's advice to unpickle it
    anyway (permcodec never runs code from a file) and without its terminal colour codes."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if found:
        return (f"its pickle refers to {found.group(1)}, which permcodec does not load (only tensors and plain "
                f"containers, so that no code in a file can run); save the weights instead: "
                f"torch.save({{'state_dict': model.state_dict(), 'init': spec.to_dict()}}, path)")
    if not isinstance(err, (pickle.UnpicklingError, RuntimeError)):  # tripped inside the unpickler
        detail = str(err).splitlines()[0] if str(err).strip() else ""
        return f"its pickle is malformed ({type(err).__name__}{': ' + detail if detail else ''})"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    if "Weights only load failed" in text:
        return ("torch cannot read it weights-only (as tensors and plain containers), and permcodec never "
                "unpickles anything else")
    return text.splitlines()[0] if text else type(err).__name__
