"""What is inside a .pc file (``permcodec info``) and whether it decodes to what it should (``verify``)."""

from __future__ import annotations

import math
import os

import torch

from . import codec, perm
from .checkpoints import read_tensors
from .decoder import memory_errors_named, tensor_init
from .encoder import initial_rows
from .errors import IntegrityError
from .format.container import Limits


def bound_bits(record: dict) -> float:
    """log2(n! / prod m_v!) summed over the rows of a permuted tensor's pool."""
    if math.prod(record["shape"]) == 0:
        return 0.0  # and nothing regenerated: an empty shape may have 2^31 - 1 rows or a row that long
    with memory_errors_named(record):
        initial = initial_rows(tensor_init(record))
        return perm.permutation_bound_bits(initial.pool())


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None where the denominator is 0 (shown as '-')."""
    return numerator / denominator if denominator else None


def describe(path, limits: Limits | None = None) -> dict:
    """Per-tensor sizes and bounds, and totals, of the .pc file at ``path``."""
    with codec.safe_open(path, limits=limits) as f:
        records = [f.record(name) for name in f.keys()]
        metadata = f.metadata()
    tensors = []
    bound_total = 0.0
    for record in records:
        numel = math.prod(record["shape"])
        permuted = record["kind"] == "permuted"
        bound = bound_bits(record) if permuted else None
        bound_total += bound or 0.0
        tensors.append({
            "name": record["name"], "kind": record["kind"], "dtype": record["dtype"], "shape": record["shape"],
            "scheme": record["scheme"] if permuted else record["codec"],
            "bytes": record["length"], "bits_per_weight": ratio(8 * record["length"], numel),
            "bound_bits_per_weight": ratio(bound, numel) if permuted else None,
            "ratio_to_bound": ratio(8 * record["length"], bound) if permuted else None,
            "ratio_to_fp32": ratio(record["length"], 4 * numel),
            "init": record.get("init"),
        })
    permuted = [t for t in tensors if t["kind"] == "permuted"]
    permuted_weights = sum(math.prod(t["shape"]) for t in permuted)
    permuted_bytes = sum(t["bytes"] for t in permuted)
    all_elements = sum(math.prod(t["shape"]) for t in tensors)
    file_bytes = os.path.getsize(path)
    return {
        "file_bytes": file_bytes, "tensors": tensors, "metadata_keys": sorted(metadata),
        "totals": {
            "tensors": len(tensors), "permuted_tensors": len(permuted), "elements": all_elements,
            "permuted_weights": permuted_weights, "permuted_bytes": permuted_bytes,
            "permuted_bits_per_weight": ratio(8 * permuted_bytes, permuted_weights),
            "bound_bits_per_weight": ratio(bound_total, permuted_weights),
            "ratio_to_bound": ratio(8 * permuted_bytes, bound_total),
            "file_bits_per_element": ratio(8 * file_bytes, all_elements),
            "ratio_to_fp32": ratio(file_bytes, 4 * all_elements),
        },
    }


def verify(path, against=None, device="cpu", limits: Limits | None = None) -> dict:
    """Decode every tensor with checksum and hash checks; with ``against``, compare bits to a model file."""
    tensors = codec.load(path, device=device, verify=True, limits=limits)
    report = {"tensors": len(tensors), "hashes": "ok"}
    if against is not None:
        expected = read_tensors(against)
        if set(expected) != set(tensors):
            only_file = sorted(set(tensors) - set(expected))
            only_model = sorted(set(expected) - set(tensors))
            raise IntegrityError(f"tensor names differ: only in the .pc file {only_file}, only in "
                                 f"{against} {only_model}")
        for name, tensor in tensors.items():
            if not same_bits(tensor, expected[name]):
                raise IntegrityError(f"tensor {name!r} differs from {against}")
        report["against"] = str(against)
    return report


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and codec.tensor_bytes(a) == codec.tensor_bytes(b))
