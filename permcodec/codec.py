"""The public API: encode LaPerm models to .pc files and decode them bit-exactly on any device.

    data = permcodec.encode(model)                 # module initialized by permcodec.init_
    permcodec.save(state_dict, "m.pc", init=spec)
    tensors = permcodec.load("m.pc", device="cuda")
    with permcodec.safe_open("m.pc") as f:
        w = f.get_tensor("layers.0.weight")       # reads only that tensor's bytes

The work is done in ``encoder``, ``decoder`` and ``scheduler``; this module checks the
arguments and names the entry points. See specs/format.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from torch import nn

from .atomicfile import atomic_write_bytes, check_output_path
from .bits import sha256_of, tensor_bytes  # noqa: F401 (part of the codec's API)
from .decoder import PCFile, safe_open  # noqa: F401 (safe_open: part of the codec's API)
from .encoder import Fallback, encode_state, refuse_baseline, state_and_spec  # noqa: F401 (Fallback: what encode reports)
from .errors import SpecError
from .format import schemes
from .format.container import Limits
from .init.initspec import InitSpec
from .init.modules import attach_spec
from .scheduler import decode_all


def encode(obj, init=None, *, raw_fallback: bool = False, level: str = schemes.DEFAULT_LEVEL,
           scheme: str | None = None, metadata: dict[str, str] | None = None, progress: bool = False,
           fallbacks: list | None = None, raw_groups: bool = True) -> bytes:
    """The .pc bytes of a module, checkpoint dict ``{"state_dict", "init"}`` or state_dict.

    ``level`` ("fast", "default", "max"; see ``schemes.LEVELS``) sets which index
    schemes are tried per tensor and how hard; the smallest is kept. ``scheme``
    forces one scheme ("delta", "exact", "multiset", "sparse") for every permuted tensor.
    Raises NotAPermutationError for a tensor of the spec that is not a per-row
    permutation of its init, unless ``raw_fallback``: then it is stored
    losslessly and a ``Fallback`` is appended to ``fallbacks``. Small raw tensors
    of one dtype share a group record (format revision 1.7), unless not
    ``raw_groups``: then every raw tensor has a record of its own, as decoders
    of earlier revisions need.
    """
    if isinstance(obj, Mapping):
        refuse_baseline(obj.get("config"), "this checkpoint", raw_fallback)
        obj = mid_run_synced(obj, init)
    state, spec = state_and_spec(obj, init)
    level = schemes.level_named(level)
    if scheme is not None:
        schemes.index_scheme(scheme)
    return encode_state(state, spec, level, scheme, raw_fallback, fallbacks, metadata, progress, raw_groups)


def mid_run_synced(checkpoint: Mapping, init) -> Mapping:
    """A checkpoint dict written mid-run (``"synced": False``) with its synced view in place of its weights,
    and a warning that says so; any other mapping as it is."""
    if checkpoint.get("synced") is not False or "state_dict" not in checkpoint:
        return checkpoint
    from .checkpoints import synced_view

    if init is None and checkpoint.get("init") is None:
        raise SpecError("no init spec: pass init=..., or a checkpoint with an 'init' record")
    spec = init or InitSpec.from_dict(checkpoint["init"])
    spec = InitSpec.from_dict(spec) if isinstance(spec, Mapping) else spec
    notes = []
    synced = {**checkpoint, "state_dict": synced_view(checkpoint, spec, "this checkpoint", notes)}
    warnings.warn(notes[0], stacklevel=3)
    return synced


def save(obj, path, init=None, **options) -> None:
    """Encode ``obj`` (see ``encode``) and write it to ``path`` (which must end in .pc) atomically."""
    check_output_path(path, (".pc",), "save writes a .pc file (torch.save writes .pt): the path")
    atomic_write_bytes(path, encode(obj, init, **options))


def decode(data: bytes, device="cpu", verify: bool = True, limits: Limits | None = None,
           progress: bool = False) -> dict:
    """All tensors of a .pc file given as bytes (see ``load``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SpecError(f"decode takes the bytes of a .pc file, not {type(data).__name__}; "
                        f"to read a file by its path use permcodec.load(path)")
    return decode_all(PCFile(data, device, verify, limits), progress)


def load(path, device="cpu", verify: bool = True, limits: Limits | None = None, progress: bool = False) -> dict:
    """All tensors of the .pc file at ``path``, rebuilt bit-exactly on ``device``. On the CPU, small tensors
    decoded together are views of shared buffers, without overlap: keeping one keeps its buffer's memory."""
    with safe_open(path, device, verify, limits) as f:
        return decode_all(f, progress)


def load_into(module: nn.Module, path, strict: bool = True, verify: bool = True):
    """Fill ``module``'s parameters and buffers from a .pc file (on the module's device), and attach the file's
    init spec, so that ``LaPerm`` and ``save`` work on the module as on one fresh from ``init_``."""
    first = next(iter(module.state_dict().values()), None)
    device = first.device if first is not None else "cpu"
    with safe_open(path, device=device, verify=verify) as f:
        result = module.load_state_dict(decode_all(f, progress=False), strict=strict)
        attach_spec(module, f.init_spec())
    return result


def load_spec(path) -> InitSpec:
    """The InitSpec of the .pc file at ``path`` (only its header is read): how its permuted tensors were drawn."""
    with safe_open(path) as f:
        return f.init_spec()
