"""Init specs: how each tensor's initial values were drawn (``init.modules.init_`` draws them into a model).

An ``InitSpec`` holds one ``TensorInit`` record per tensor: name, shape, seed,
stream id, distribution and its float32 parameters. From a record alone,
``sample`` regenerates the tensor bit for bit on any device, or as a numpy
array without torch (``device=permcodec.arrays.NUMPY``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import SpecError
from ..keys import key_mismatch
from ..rows import BlockLayout, row_shape
from . import distributions
from .philox import RNG_NAME, check_seed, check_stream

if TYPE_CHECKING:
    import torch

SPEC_FORMAT = "permcodec-init"
SPEC_VERSION = 1


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

    def sample(self, start: int = 0, count: int | None = None, device="cpu") -> "torch.Tensor":
        """Flat elements [start, start+count) of the initial tensor, float32."""
        count = self.numel - start if count is None else count
        if not (0 <= start and 0 <= count and start + count <= self.numel):
            raise SpecError(f"tensor {self.name!r}: range [{start}, {start + count}) outside [0, {self.numel})")
        row_length = row_shape(self.shape)[1] if self.dist == "levels" else None  # 0-D tensors have no rows
        return distributions.sample(self.dist, self.params, self.seed, self.stream, start, count, device,
                                    row_length=row_length)

    def regenerate(self, device="cpu") -> "torch.Tensor":
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

    def regenerate(self, name: str, device="cpu") -> "torch.Tensor":
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
