"""Encoding: a model's state_dict and init spec to records and sections, packed as a .pc file.

A tensor the init spec names is stored as its init record plus its rows'
arrangement in the smallest index scheme the level tries (``format.schemes``);
every other tensor raw, by the raw codec. See specs/format.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from . import perm
from .bits import sha256_of, tensor_bytes
from .dtypes import dtype_name
from .errors import NotAPermutationError, SpecError
from .format import container, groups, schemes
from .init.initspec import InitSpec, TensorInit
from .init.modules import attached_spec, refuse_aliased
from .init.philox import RNG_NAME
from .progress import progress as progress_lines


def state_and_spec(obj, init) -> tuple[dict[str, torch.Tensor], InitSpec]:
    """The state_dict and init spec behind a module, a checkpoint dict or a state_dict (what ``encode`` takes)."""
    if isinstance(obj, nn.Module):
        state, spec = obj.state_dict(), init or attached_spec(obj)
    elif isinstance(obj, Mapping) and "state_dict" in obj and not isinstance(obj["state_dict"], torch.Tensor):
        state = obj["state_dict"]
        spec = init or (InitSpec.from_dict(obj["init"]) if obj.get("init") is not None else None)
    elif isinstance(obj, Mapping):
        state, spec = obj, init
    else:
        raise SpecError(f"can only encode a module, a state_dict or a checkpoint dict, not {type(obj).__name__}")
    if spec is None:
        raise SpecError("no init spec: pass init=..., or encode a module initialized by permcodec.init_, "
                        "or a checkpoint with an 'init' record")
    if isinstance(spec, Mapping):
        spec = InitSpec.from_dict(spec)
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise SpecError(f"state_dict entry {name!r} is not a named tensor")
    missing = [name for name in spec.names() if name not in state]
    if missing:
        raise SpecError(f"init spec names tensor(s) the state_dict lacks: {', '.join(missing)}")
    refuse_aliased(state.items(), names=spec.names())
    return dict(state), spec


BASELINE = ("{what} was trained with --baseline (the inner optimizer alone, without LaPerm), so its weights are "
            "no longer permutations of their initial values and permcodec cannot store them as such; train without "
            "--baseline, or store every tensor losslessly with --raw-fallback (Python: raw_fallback=True)")


def refuse_baseline(config, what: str, raw_fallback: bool) -> None:
    """NotAPermutationError for a run trained without LaPerm (its config says baseline), unless ``raw_fallback``."""
    if isinstance(config, Mapping) and config.get("baseline") is True and not raw_fallback:
        raise NotAPermutationError(BASELINE.format(what=what))


def initial_rows(record: TensorInit, device="cpu") -> perm.SortedRows:
    """A tensor's initial values as rows, regenerated from its record, with their sort order."""
    return perm.SortedRows.of(record.regenerate(device).reshape(perm.row_shape(record.shape)))


def layout_mismatch(tensor: torch.Tensor, record: TensorInit) -> str | None:
    """Why ``tensor``'s dtype or shape rules out its being a permutation of ``record``'s pool, or None."""
    if tensor.dtype != torch.float32:
        return f"dtype is {tensor.dtype}, pools are float32"
    if tuple(tensor.shape) != record.shape:
        return f"shape is {tuple(tensor.shape)}, init spec says {record.shape}"
    return None


def first_bad_row(trained: perm.SortedRows, initial: perm.SortedRows) -> int | None:
    """None if every trained row holds exactly its initial row's values, else the first row that does not."""
    if trained.rows.numel() == 0:  # a per-row flag would cost a byte for each of up to 2^31 - 1 empty rows
        return None
    ok = perm.same_bits_per_row(trained.pool(), initial.pool())
    return None if bool(ok.all()) else int((~ok).nonzero()[0])


def permuted_record(name: str, tensor: torch.Tensor, record: TensorInit,
                    parts: list[tuple[str, dict, bytes]]) -> dict:
    """The record of a permuted tensor coded as ``parts`` (scheme, params, section): one without blocks."""
    fields = {"name": name, "kind": "permuted", "dtype": "float32", "shape": list(record.shape),
              "sha256": sha256_of(tensor),
              "init": {"rng": RNG_NAME, "seed": record.seed, "stream": record.stream, "dist": record.dist,
                       "params": record.params}}
    if record.block is None:
        (scheme, params, _), = parts
        return {**fields, "scheme": scheme, "scheme_params": params}
    return {**fields, "block": record.block.to_dict(),
            "parts": [{"scheme": scheme, "scheme_params": params, "length": len(section)}
                      for scheme, params, section in parts]}


def raw_record(name: str, tensor: torch.Tensor) -> dict:
    return {"name": name, "kind": "raw", "dtype": dtype_name(tensor, name), "shape": list(tensor.shape),
            "sha256": sha256_of(tensor), "codec": schemes.RAW_CODEC.id}


def encode_raw(tensor: torch.Tensor, zstd_level: int) -> bytes:
    return schemes.RAW_CODEC.encode(tensor_bytes(tensor), tensor.element_size(), zstd_level)


def encode_group(names: list[str], state: dict[str, torch.Tensor], positions: dict[str, int],
                 zstd_level: int) -> tuple[dict, bytes]:
    """(record, section) of a group of raw tensors of one dtype (specs/format.md Section 6.4): their bytes back
    to back, as one tensor; ``positions`` gives each name's place in the file's tensor order."""
    tensors = [state[name] for name in names]
    data = b"".join(tensor_bytes(tensor) for tensor in tensors)
    record = {"kind": "group", "dtype": dtype_name(tensors[0], names[0]), "names": list(names),
              "shapes": [list(tensor.shape) for tensor in tensors], "positions": [positions[name] for name in names],
              "sha256": hashlib.sha256(data).digest(), "codec": schemes.RAW_CODEC.id}
    return record, schemes.RAW_CODEC.encode(data, tensors[0].element_size(), zstd_level)


@dataclass(frozen=True)
class Fallback:
    """A tensor of the init spec that was stored raw because it is not a permutation."""

    name: str
    row: int
    reason: str


class NotPermuted(Exception):
    """Internal: a tensor of the spec that is not a per-row permutation of its init (row, reason)."""

    def __init__(self, row: int, reason: str):
        super().__init__(reason)
        self.row, self.reason = row, reason


def encode_permuted(name: str, tensor: torch.Tensor, record: TensorInit, level: schemes.Level,
                    scheme: str | None) -> tuple[dict, bytes]:
    """(record, section) of a tensor the spec names; NotPermuted where it is not a permutation of its init."""
    reason = layout_mismatch(tensor, record)
    if reason is not None:
        raise NotPermuted(0, reason)
    view = perm.BlockView.of(record)
    initial_parts = view.split(record.regenerate().reshape(perm.row_shape(record.shape)))
    trained_parts = view.split(perm.as_rows(tensor.detach().cpu()))
    parts = []
    for group, (trained_part, initial_part) in enumerate(zip(trained_parts, initial_parts)):
        initial, trained = perm.SortedRows.of(initial_part), perm.SortedRows.of(trained_part)
        bad = first_bad_row(trained, initial)
        if bad is not None:
            what = "row" if record.block is None else \
                f"row's blocks (one of them; {record.block.layout} blocks of {record.block.size})"
            raise NotPermuted(view.row_of(group, bad), f"its values differ from the initial values of that {what}")
        parts.append(schemes.encode_best(trained, initial, level, scheme))
    return permuted_record(name, tensor, record, parts), b"".join(section for _, _, section in parts)


def encode_state(state: dict[str, torch.Tensor], spec: InitSpec, level: schemes.Level, scheme: str | None,
                 raw_fallback: bool, fallbacks: list | None, metadata: dict[str, str] | None,
                 progress: bool, raw_groups: bool = True) -> bytes:
    """The .pc bytes of a checked state_dict and spec (see ``codec.encode`` for the options): the permuted
    tensors first, then the raw ones, the small ones of a dtype in group records (``format.groups``) if
    ``raw_groups``."""
    bar = progress_lines(sum(t.numel() for t in state.values()), "encode", "weights", progress)
    permuted, raw_dtypes = {}, {}
    for name, tensor in state.items():
        coded = encode_if_permuted(name, tensor, spec[name], level, scheme, raw_fallback, fallbacks) \
            if name in spec else None
        if coded is not None:
            permuted[name] = coded
            bar.update(tensor.numel())
        else:  # a dtype the format cannot hold is refused here, in file order
            raw_dtypes[name] = dtype_name(tensor, name)
    planned = groups.plan_groups([(name, dtype, state[name].numel()) for name, dtype in raw_dtypes.items()]) \
        if raw_groups else []
    group_from = {members[0]: members for members in planned}
    grouped = {name for members in planned for name in members}
    positions = {name: position for position, name in enumerate(state)}
    records, sections = [], []
    for name, tensor in state.items():
        if name in permuted:
            record, section = permuted[name]
        elif name in group_from:
            record, section = encode_group(group_from[name], state, positions, level.zstd_level)
        elif name in grouped:
            continue
        else:
            record, section = raw_record(name, tensor), encode_raw(tensor, level.zstd_level)
        records.append(record)
        sections.append(section)
        if name not in permuted:
            bar.update(sum(state[member].numel() for member in group_from.get(name, [name])))
    bar.close()
    return container.pack(records, sections, canonical_metadata(metadata))


def canonical_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """The metadata map with its keys sorted: a file's bytes never depend on the order a dict was built in
    (safetensors, for one, hands metadata back in hash order), so a decoded file re-encodes to the same bytes."""
    return dict(sorted((metadata or {}).items()))


def encode_if_permuted(name: str, tensor: torch.Tensor, record: TensorInit, level: schemes.Level,
                       scheme: str | None, raw_fallback: bool, fallbacks: list | None) -> tuple[dict, bytes] | None:
    """(record, section) of a tensor the spec names, or None where it is to be stored raw (an allowed
    fallback: it is not a permutation of its init)."""
    try:
        return encode_permuted(name, tensor, record, level, scheme)
    except NotPermuted as why:
        refuse_or_note(name, why, raw_fallback, fallbacks)
    return None


def refuse_or_note(name: str, why: NotPermuted, raw_fallback: bool, fallbacks: list | None) -> None:
    """NotAPermutationError, unless ``raw_fallback``: then a Fallback is noted and the tensor is stored raw."""
    if not raw_fallback:
        raise NotAPermutationError(f"tensor {name!r}: row {why.row} is not a permutation of its initial "
                                   f"values ({why.reason}); did training end on LaPerm.sync()? To store it "
                                   f"losslessly anyway use raw_fallback=True (CLI: --raw-fallback)")
    if fallbacks is not None:
        fallbacks.append(Fallback(name, why.row, why.reason))
