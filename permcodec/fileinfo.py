"""What is inside a .pc file (``permcodec info``) and whether it decodes to what it should (``verify``)."""

from __future__ import annotations

import math
import os

import torch

from . import codec, perm
from .errors import IntegrityError
from .modelfile import read_tensors


def bound_bits(record: dict) -> float:
    """log2(n! / prod m_v!) summed over the rows of a permuted tensor's pool."""
    initial = codec.initial_rows(codec.init_of(record))
    return perm.permutation_bound_bits(initial.pool())


def describe(path) -> dict:
    """Per-tensor sizes and bounds, and totals, of the .pc file at ``path``."""
    with codec.safe_open(path) as f:
        records = [f.record(name) for name in f.keys()]
        metadata = f.metadata()
    tensors = []
    for record in records:
        numel = math.prod(record["shape"])
        permuted = record["kind"] == "permuted"
        bound = bound_bits(record) if permuted else None
        tensors.append({
            "name": record["name"], "kind": record["kind"], "dtype": record["dtype"], "shape": record["shape"],
            "scheme": record["scheme"] if permuted else record["codec"],
            "bytes": record["length"], "bits_per_weight": 8 * record["length"] / numel if numel else 0.0,
            "bound_bits_per_weight": bound / numel if permuted and numel else None,
            "ratio_to_bound": 8 * record["length"] / bound if permuted and bound else None,
            "ratio_to_fp32": record["length"] / (4 * numel) if numel else 0.0,
            "init": record.get("init"),
        })
    permuted = [t for t in tensors if t["kind"] == "permuted"]
    permuted_weights = sum(math.prod(t["shape"]) for t in permuted)
    permuted_bytes = sum(t["bytes"] for t in permuted)
    bound_total = sum(t["bound_bits_per_weight"] * math.prod(t["shape"]) for t in permuted)
    all_elements = sum(math.prod(t["shape"]) for t in tensors)
    file_bytes = os.path.getsize(path)
    return {
        "file_bytes": file_bytes, "tensors": tensors, "metadata_keys": sorted(metadata),
        "totals": {
            "tensors": len(tensors), "permuted_tensors": len(permuted), "elements": all_elements,
            "permuted_weights": permuted_weights, "permuted_bytes": permuted_bytes,
            "permuted_bits_per_weight": 8 * permuted_bytes / permuted_weights if permuted_weights else None,
            "bound_bits_per_weight": bound_total / permuted_weights if permuted_weights else None,
            "ratio_to_bound": 8 * permuted_bytes / bound_total if bound_total else None,
            "file_bits_per_element": 8 * file_bytes / all_elements if all_elements else None,
            "ratio_to_fp32": file_bytes / (4 * all_elements) if all_elements else None,
        },
    }


def verify(path, against=None, device="cpu") -> dict:
    """Decode every tensor with checksum and hash checks; with ``against``, compare bits to a model file."""
    tensors = codec.load(path, device=device, verify=True)
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
