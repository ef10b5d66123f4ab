"""Model files into the codec: read model.pt / .safetensors inputs (``decoded_files`` writes the outputs).

model.pt is read only with ``torch.load(..., weights_only=True)``, so a crafted
pickle cannot run code; it must be the trainer's dict ``{"state_dict", "init", ...}``.
A .safetensors input carries its init spec as JSON under the metadata key
``permcodec.init``.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from . import perm
from .decoded_files import SAFETENSORS_INIT_KEY, SAFETENSORS_ORDER_KEY
from .errors import FormatError
from .format.container import MAGIC
from .init.initspec import InitSpec
from .weightsonly import load_weights_only


def read_model(path, notes: list[str] | None = None) -> tuple[dict[str, torch.Tensor], InitSpec, dict[str, str]]:
    """(state_dict, init spec, metadata to carry into the .pc file) of a model file.

    A mid-run checkpoint (``--save-every``) gives its synced view, what a sync would write now, and says so
    in ``notes``.
    """
    path = check_model_file(path)
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    return _read_checkpoint(path, notes if notes is not None else [])


def check_model_file(path) -> Path:
    """``path`` as a Path, once it names a readable file that is not a .pc file: what is wrong with an input,
    said before anything is read in full."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            raise FormatError(f"{path} is already a .pc file; 'permcodec decode' or 'info' reads it")
    return path


def _read_safetensors(path: Path):
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, ValueError, OSError) as err:
        raise FormatError(f"{path} is not a valid safetensors file: {err}") from None
    if SAFETENSORS_INIT_KEY not in metadata:
        raise FormatError(f"{path} has no {SAFETENSORS_INIT_KEY!r} metadata holding the init spec as JSON")
    try:
        spec_dict = json.loads(metadata[SAFETENSORS_INIT_KEY])
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: metadata {SAFETENSORS_INIT_KEY!r} is not JSON ({err})") from None
    carried = {k: v for k, v in metadata.items() if k not in (SAFETENSORS_INIT_KEY, SAFETENSORS_ORDER_KEY)}
    return in_stored_order(state, metadata.get(SAFETENSORS_ORDER_KEY), path), InitSpec.from_dict(spec_dict), carried


def in_stored_order(state: dict, order_json: str | None, path: Path) -> dict:
    """``state`` in the order ``permcodec decode`` recorded (safetensors hands tensors back sorted by name)."""
    if order_json is None:
        return state
    try:
        order = json.loads(order_json)
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: metadata {SAFETENSORS_ORDER_KEY!r} is not JSON ({err})") from None
    if not isinstance(order, list) or not all(isinstance(name, str) for name in order) \
            or sorted(order) != sorted(state):
        raise FormatError(f"{path}: metadata {SAFETENSORS_ORDER_KEY!r} must list each tensor of the file once")
    return {name: state[name] for name in order}


def _read_checkpoint(path: Path, notes: list[str]):
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict):
        raise FormatError(f"{path} is not a permcodec checkpoint: it holds a {type(ckpt).__name__}, not a dict "
                          f"with 'state_dict' and 'init'")
    if ckpt.get("init") is None and is_plain_weights(ckpt):
        raise FormatError(NOT_LAPERM.format(path=path))
    if not isinstance(ckpt.get("state_dict"), dict):
        raise FormatError(f"{path} is not a permcodec checkpoint: expected a dict with a 'state_dict' entry")
    if ckpt.get("init") is None:
        raise FormatError(NOT_LAPERM.format(path=path))
    spec = InitSpec.from_dict(ckpt["init"])
    return synced_view(ckpt, spec, str(path), notes), spec, carried_metadata(ckpt, path)


def synced_view(ckpt: dict, spec: InitSpec, where: str, notes: list[str]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights; for one written mid-run (between two syncs), what a sync would write now."""
    if ckpt.get("synced") is not False:
        return ckpt["state_dict"]
    check_syncable(ckpt, spec, where)
    notes.append(f"{where} was written mid-run, between two syncs: encoding its synced view (what a sync would "
                 f"write now)")
    reset_bn = bool((ckpt.get("config") or {}).get("reset_bn", False))
    return perm.synced_state_dict(ckpt["state_dict"], spec, reset_bn=reset_bn)


def check_syncable(ckpt: dict, spec: InitSpec, where: str) -> None:
    """FormatError unless a sync can run on the checkpoint: tensors only, a config map, and each tensor of the
    spec a float32 tensor of its record's shape (a sync draws the record's whole pool, whatever the tensor)."""
    state, config = ckpt["state_dict"], ckpt.get("config")
    if not all(isinstance(tensor, torch.Tensor) for tensor in state.values()):
        raise FormatError(f"{where}: its state_dict holds values that are not tensors")
    if config is not None and not isinstance(config, dict):
        raise FormatError(f"{where}: its config must be a map of settings, found {type(config).__name__}")
    for record in spec:
        tensor = state.get(record.name)
        if tensor is not None and (tensor.dtype != torch.float32 or tuple(tensor.shape) != record.shape):
            raise FormatError(f"{where}: tensor {record.name!r} is {tensor.dtype} of shape {tuple(tensor.shape)}, "
                              f"its init record says float32 of shape {record.shape}")


NOT_LAPERM = ("{path} holds weights without an init spec, so they are not a LaPerm model: permcodec stores "
              "networks trained by LaPerm from a permcodec.init_ draw (train one with 'permcodec train', or in "
              "Python call permcodec.init_(model, seed) before training with permcodec.LaPerm)")


def is_plain_weights(obj: dict) -> bool:
    """A state_dict, or a checkpoint dict around one, without an init spec: an ordinary (non-LaPerm) model."""
    state = obj.get("state_dict", obj)
    return isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


def carried_metadata(ckpt: dict, path: Path) -> dict[str, str]:
    """What a checkpoint carries into the .pc metadata: a decoded file's own map, or the trainer's config and
    metrics as JSON."""
    if "metadata" in ckpt:
        metadata = ckpt["metadata"]
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise FormatError(f"{path}: 'metadata' must map strings to strings")
        return dict(metadata)
    return {f"permcodec.{key}": json.dumps(ckpt[key]) for key in ("config", "metrics") if key in ckpt}


def read_tensors(path, notes: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Just the named tensors of a .safetensors file, a .pt dict of tensors, or a checkpoint's state_dict: for one
    written mid-run, its synced view, as ``read_model`` gives it to the encoder (and says so in ``notes``)."""
    path = check_model_file(path)
    if path.suffix.lower() == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path))
        except (safetensors.SafetensorError, ValueError) as err:
            raise FormatError(f"{path} is not a valid safetensors file: {err}") from None
    obj = load_weights_only(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        if obj.get("synced") is False and obj.get("init") is not None:
            obj = synced_view(obj, InitSpec.from_dict(obj["init"]), str(path), notes if notes is not None else [])
        else:
            obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FormatError(f"{path} holds neither a dict of tensors nor a checkpoint with a 'state_dict'")
    return obj
