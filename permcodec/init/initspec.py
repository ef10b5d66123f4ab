"""Init specs: how each tensor's initial values were drawn, and ``init_`` that draws them.

An ``InitSpec`` holds one ``TensorInit`` record per tensor: name, shape, seed,
stream id, distribution and its float32 parameters. From a record alone,
``sample`` regenerates the tensor bit for bit on any device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SpecError
from ..keys import key_mismatch
from ..rows import DEFAULT_BLOCK_LAYOUT, BlockLayout, row_shape
from . import distributions
from .philox import RNG_NAME, check_seed, check_stream

SPEC_FORMAT = "permcodec-init"
SPEC_VERSION = 1
INIT_ATTRIBUTE = "_permcodec_init"
WEIGHTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class TensorInit:
    """How one tensor's initial values were drawn."""

    name: str
    shape: tuple[int, ...]
    seed: int
    stream: int
    dist: str
    params: dict = field(hash=False)
    block: BlockLayout | None = None  # None: each row is permuted as a whole

    @property
    def numel(self) -> int:
        """Elements of the tensor."""
        return math.prod(self.shape)

    def to_dict(self) -> dict:
        """The record as a JSON- and msgpack-safe dict (specs/rng.md Section 7)."""
        record = {"name": self.name, "shape": list(self.shape), "seed": self.seed, "stream": self.stream,
                  "dist": self.dist, "params": self.params}
        if self.block is not None:  # absent, not null: a spec without blocks keeps its bytes of before
            record["block"] = self.block.to_dict()
        return record

    @classmethod
    def from_dict(cls, d) -> "TensorInit":
        """The record of ``to_dict``, every field checked; SpecError names what is wrong."""
        expected = {"name", "shape", "seed", "stream", "dist", "params"}
        if isinstance(d, dict) and "block" in d:
            expected.add("block")
        found = key_mismatch(d, expected)
        if found:
            raise SpecError(f"init record must have keys {sorted(expected)}, found {found}")
        name = d["name"]
        if not isinstance(name, str) or not name:
            raise SpecError(f"init record name must be a non-empty string, found {name!r}")
        shape = d["shape"]
        if not isinstance(shape, (list, tuple)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise SpecError(f"tensor {name!r}: shape must be a list of non-negative integers, found {shape!r}")
        dist = d["dist"]
        if not isinstance(dist, str):
            raise SpecError(f"tensor {name!r}: dist must be a string, found {dist!r}")
        params = distributions.validate(dist, d["params"], f"tensor {name!r}")
        block = BlockLayout.from_dict(d["block"], f"tensor {name!r}") if "block" in d else None
        if not shape and (block is not None or dist == "levels"):
            raise SpecError(f"tensor {name!r}: a 0-D tensor has no rows, so it takes neither blocks nor levels")
        return cls(name, tuple(shape), check_seed(d["seed"]), check_stream(d["stream"]), dist, params, block)

    def sample(self, start: int = 0, count: int | None = None, device="cpu") -> torch.Tensor:
        """Flat elements [start, start+count) of the initial tensor, float32."""
        count = self.numel - start if count is None else count
        if not (0 <= start and 0 <= count and start + count <= self.numel):
            raise SpecError(f"tensor {self.name!r}: range [{start}, {start + count}) outside [0, {self.numel})")
        row_length = row_shape(self.shape)[1] if self.dist == "levels" else None  # 0-D tensors have no rows
        return distributions.sample(self.dist, self.params, self.seed, self.stream, start, count, device,
                                    row_length=row_length)

    def regenerate(self, device="cpu") -> torch.Tensor:
        """The tensor's initial values on ``device``, bit-identical on every device and torch version."""
        return self.sample(device=device).reshape(self.shape)


class InitSpec:
    """The init records of a model, keyed by tensor name (state_dict names)."""

    def __init__(self, records=()):
        self.records: dict[str, TensorInit] = {}
        streams: dict[tuple[int, int], str] = {}
        for record in records:
            if record.name in self.records:
                raise SpecError(f"init spec names tensor {record.name!r} twice")
            other = streams.setdefault((record.seed, record.stream), record.name)
            if other != record.name:
                raise SpecError(f"tensors {other!r} and {record.name!r} share seed {record.seed} "
                                f"and stream {record.stream}; each tensor needs its own stream")
            self.records[record.name] = record

    def __contains__(self, name) -> bool:
        return name in self.records

    def __getitem__(self, name) -> TensorInit:
        try:
            return self.records[name]
        except KeyError:
            raise SpecError(f"init spec has no tensor {name!r}") from None

    def __iter__(self):
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    def __eq__(self, other) -> bool:
        return isinstance(other, InitSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"InitSpec({len(self)} tensors: {', '.join(self.records)})"

    def names(self) -> list[str]:
        """The tensor names of the spec, in order."""
        return list(self.records)

    def regenerate(self, name: str, device="cpu") -> torch.Tensor:
        """The initial values of tensor ``name``; the same arguments always give identical bits."""
        return self[name].regenerate(device)

    def to_dict(self) -> dict:
        """A msgpack- and JSON-safe dict (only dicts, lists, str, int, float)."""
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "rng": RNG_NAME,
                "tensors": [r.to_dict() for r in self]}

    @classmethod
    def from_dict(cls, d) -> "InitSpec":
        """The spec of ``to_dict`` (from JSON, a checkpoint or a safetensors file), every record checked."""
        if not isinstance(d, dict) or d.get("format") != SPEC_FORMAT:
            raise SpecError(f"not a permcodec init spec: expected a map with format={SPEC_FORMAT!r}")
        if type(d.get("version")) is not int or d.get("version") != SPEC_VERSION:
            raise SpecError(f"init spec version {d.get('version')!r} is not supported (expected {SPEC_VERSION})")
        if d.get("rng") != RNG_NAME:
            raise SpecError(f"init spec rng {d.get('rng')!r} is not supported (expected {RNG_NAME!r})")
        tensors = d.get("tensors")
        if not isinstance(tensors, list):
            raise SpecError("init spec 'tensors' must be a list")
        return cls(TensorInit.from_dict(t) for t in tensors)


def init_targets(module: nn.Module, bias: bool) -> list[tuple[str, torch.Tensor]]:
    """The (name, parameter) pairs ``init_`` draws: Conv/Linear weights, and their biases if asked.

    Every name is listed, so a layer registered twice appears twice (and is then refused as tied).
    """
    targets = []
    for prefix, layer in module.named_modules(remove_duplicate=False):
        if not isinstance(layer, WEIGHTED_LAYERS):
            continue
        dot = f"{prefix}." if prefix else ""
        targets.append((f"{dot}weight", layer.weight))
        if bias and layer.bias is not None:
            targets.append((f"{dot}bias", layer.bias))
    return targets


# ---------------------------------------------------------------- tied and aliased tensors

def _memory_span(tensor: torch.Tensor):
    """(storage key, first byte, end byte) of the memory ``tensor`` can read; None where none is visible.

    Meta, empty and non-strided tensors have no span; they alias only themselves.
    """
    if tensor.layout != torch.strided or tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    size = tensor.element_size()
    extent = 1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))
    start = tensor.storage_offset() * size
    return (tensor.device, tensor.untyped_storage().data_ptr()), start, start + extent * size


def aliased_pairs(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, str]]:
    """Every pair of names (earlier, later) whose tensors are one object or overlap in one storage.

    Overlap is judged by byte ranges, so two interleaved views count as aliased. Non-tensor values are skipped.
    """
    earlier: dict = {}
    for name, tensor in named_tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        span = _memory_span(tensor)
        bucket = earlier.setdefault(span[0] if span else ("object", id(tensor)), [])
        for other_name, other, other_span in bucket:
            if other is tensor or (span and other_span[1] < span[2] and span[1] < other_span[2]):
                yield other_name, name
        bucket.append((name, tensor, span))


def refuse_aliased(named_tensors: Iterable[tuple[str, torch.Tensor]], names=None) -> None:
    """Raise ``SpecError`` on the first aliased pair (only pairs with a member in ``names``, if given)."""
    names = None if names is None else set(names)
    for a, b in aliased_pairs(named_tensors):
        if names is None or a in names or b in names:
            raise SpecError(f"parameters {a!r} and {b!r} are the same tensor (tied or aliased); permcodec stores "
                            f"each permuted tensor once and cannot store tied weights: untie them or leave one "
                            f"out of init_")


def refuse_tied_targets(module: nn.Module, targets: list[tuple[str, torch.Tensor]]) -> None:
    """Raise ``SpecError`` if a target shares memory with another target or any parameter or buffer of ``module``."""
    names = {name for name, _ in targets}
    others = [(name, t) for name, t in module.named_parameters(remove_duplicate=False) if name not in names]
    others += [(name, t) for name, t in module.named_buffers(remove_duplicate=False) if name not in names]
    refuse_aliased(targets + others, names)


def init_(module: nn.Module, seed: int, dist: str = "he_uniform", *, bias: bool = False,
          block: int | None = None, block_layout: str = DEFAULT_BLOCK_LAYOUT, **params) -> InitSpec:
    """Draw every Conv/Linear weight of ``module`` (and bias, if ``bias``) from ``dist``; returns the spec.

    ``dist`` and its keyword parameters (specs/rng.md Section 6 defines each draw):

    - ``"he_uniform"`` (default), ``"glorot_uniform"``: U(-bound, bound), the bound from the tensor's fans;
      no parameters.
    - ``"he_normal"``, ``"glorot_normal"``: N(0, std), std from the fans; no parameters.
    - ``"uniform"``: U(low, high); ``low=0.0``, ``high=1.0``.
    - ``"normal"``: N(mean, std); ``mean=0.0``, ``std=1.0``.
    - ``"sparse"``: each value kept with probability ``density`` (required, in (0, 1]) and drawn from
      ``base`` (default ``"he_uniform"``; any of the six above, with its own parameters), else 0.0.
    - ``"shared"``: each value is ``value`` (required, non-zero) with probability ``density`` (required),
      else 0.0.
    - ``"levels"``: each row holds ``num_levels`` (required, K) fixed values, the quantile midpoints
      (2k+1)/2K of ``base`` (default ``"he_uniform"``, with its own parameters), n // K copies each and
      one more for the first n mod K, in a Philox-drawn order. Stored at about log2 K bits per weight.

    ``block=b`` makes the permutations block-local: each row's positions are grouped into blocks of
    about b (``block_layout``: ``"shuffled"``, the default, ``"strided"`` or ``"contiguous"``; see
    ``permcodec.rows.BlockLayout``), and LaPerm permutes within each block, so a block costs log2(b!) bits.

    Parameters are stored as float32. Streams are numbered 0, 1, 2, ... in
    module order. The spec is attached to the module, where ``LaPerm`` and
    ``save`` find it. torch's RNG is not used. Tied or aliased targets are
    refused before any value changes.
    """
    seed = check_seed(seed)
    layout = None if block is None else BlockLayout(block_layout, block)
    targets = init_targets(module, bias)
    refuse_tied_targets(module, targets)
    records = []
    for stream, (name, tensor) in enumerate(targets):
        if tensor.dtype != torch.float32:
            raise SpecError(f"tensor {name!r} has dtype {tensor.dtype}; permcodec pools are float32")
        record_params = distributions.make_params(dist, tensor.shape, **params)
        records.append(TensorInit(name, tuple(tensor.shape), seed, stream, dist, record_params, layout))
    if not records:
        raise SpecError(f"module {type(module).__name__} has no Conv/Linear layer to initialize")
    spec = InitSpec(records)
    with torch.no_grad():
        for (_, tensor), record in zip(targets, records):
            tensor.copy_(record.regenerate(device=tensor.device))
    attach_spec(module, spec)
    return spec


def attach_spec(module: nn.Module, spec: InitSpec) -> None:
    """Attach ``spec`` to ``module``, where ``LaPerm`` and ``save`` find it (``init_`` and ``load_into`` do this)."""
    setattr(module, INIT_ATTRIBUTE, spec)


def attached_spec(module: nn.Module) -> InitSpec | None:
    """The spec ``init_`` attached to ``module``, or None."""
    return getattr(module, INIT_ATTRIBUTE, None)
